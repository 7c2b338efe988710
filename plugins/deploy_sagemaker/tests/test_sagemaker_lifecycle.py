"""The whole SageMaker lifecycle in raw boto3 against moto in server mode on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from loyaltylens_core.kernel.errors import ConfigError, StageError, UsageError
from loyaltylens_core.sdk.testing import make_context, make_features, write_tiny_archive
from loyaltylens_deploy_sagemaker import SageMakerSettings, build

from loyaltylens_deploy_sagemaker.testing import start_moto

ROLE = "arn:aws:iam::123456789012:role/LoyaltyLensSageMaker"


def target_for(tmp_path, url, **overrides):
    settings = {"role_arn": ROLE, "bucket": "loyaltylens-models", "create_bucket": True,
                "endpoint_url": url, "wait_timeout_s": 30, **overrides}
    return build(SageMakerSettings(**settings), make_context(tmp_path, "deploy_target", "sagemaker"))


def client(service, url):
    return boto3.client(service, endpoint_url=url, region_name="us-east-1")


def names(url, kind: str, prefix: str) -> list[str]:
    """Model or endpoint-config names starting with prefix (filtered here, not by moto)."""
    sm = client("sagemaker", url)
    if kind == "model":
        return [m["ModelName"] for m in sm.list_models(MaxResults=100)["Models"] if m["ModelName"].startswith(prefix)]
    return [c["EndpointConfigName"] for c in sm.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]
            if c["EndpointConfigName"].startswith(prefix)]


def queue_invoke_result(url, body: dict) -> None:
    payload = {"results": [{"Body": json.dumps(body), "ContentType": "application/json",
                            "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}]}
    request = urllib.request.Request(url + "/moto-api/static/sagemaker/endpoint-results",
                                     data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


def test_full_lifecycle(tmp_path, moto_url, aws_env):
    archive = write_tiny_archive(tmp_path / "model.tar.gz")
    target = target_for(tmp_path, moto_url, endpoint_name="ll-lifecycle")
    up = target.up(archive)
    assert up["status"] == "InService" and up["model_version"] == "tiny_v1"

    # S3 holds the exact archive; model, config and endpoint exist and point at each other.
    bucket, key = up["model_data"][len("s3://"):].split("/", 1)
    assert client("s3", moto_url).get_object(Bucket=bucket, Key=key)["Body"].read() == archive.read_bytes()
    sm = client("sagemaker", moto_url)
    endpoint = sm.describe_endpoint(EndpointName="ll-lifecycle")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == up["model_data"]
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model["ExecutionRoleArn"] == ROLE
    assert "pytorch-inference" in model["PrimaryContainer"]["Image"]

    queue_invoke_result(moto_url, {"propensity_score": 0.42, "model_version": "tiny_v1"})
    reply = target.invoke(make_features(customer_id="C777"))
    assert reply == {"propensity_score": 0.42, "model_version": "tiny_v1"}

    assert target.status()["status"] == "InService"
    assert len(names(moto_url, "model", "ll-lifecycle")) == 1
    down = target.down()
    assert len(down["deleted"]) == 3
    assert target.status()["status"] == "absent"
    assert names(moto_url, "model", "ll-lifecycle") == []
    assert names(moto_url, "config", "ll-lifecycle") == []
    assert target.down()["status"] == "absent"  # idempotent


def multi_model_package(root):
    """What `deploy package --multi-model` writes: archives and models.json."""
    manifest = {"format": "loyaltylens-multi-model/1", "models": {}}
    for name in ("global", "tier=gold"):
        write_tiny_archive(root / f"{name}.tar.gz", version=f"{name}/tiny_v1")
        manifest["models"][name] = {"target_model": f"{name}.tar.gz", "model_version": f"{name}/tiny_v1"}
    (root / "models.json").write_text(json.dumps(manifest))
    return root


def test_multi_model_endpoint_lifecycle(tmp_path, moto_url, aws_env):
    (tmp_path / "mme").mkdir()
    package = multi_model_package(tmp_path / "mme")
    target = target_for(tmp_path, moto_url, endpoint_name="ll-mme")
    up = target.up(package)
    assert up["target_models"] == ["global.tar.gz", "tier=gold.tar.gz"]
    # One model in Mode MultiModel over the S3 prefix holding every archive.
    sm = client("sagemaker", moto_url)
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName="ll-mme")["EndpointConfigName"])
    container = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
    assert container["Mode"] == "MultiModel" and container["ModelDataUrl"] == up["model_data"]
    bucket, prefix = up["model_data"][len("s3://"):].split("/", 1)
    assert prefix.endswith("/")
    stored = client("s3", moto_url).get_object(Bucket=bucket, Key=prefix + "tier=gold.tar.gz")["Body"].read()
    assert stored == (package / "tier=gold.tar.gz").read_bytes()

    # InvokeEndpoint carries TargetModel (the header SageMaker passes on to the container).
    sent: list[dict] = []
    target.runtime.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint",
                                        lambda request, **_: sent.append(dict(request.headers)))
    queue_invoke_result(moto_url, {"propensity_score": 0.5, "model_version": "tier=gold/tiny_v1"})
    reply = target.invoke(make_features(tier="gold"))
    assert reply["target_model"] == "tier=gold.tar.gz"
    queue_invoke_result(moto_url, {"propensity_score": 0.5, "model_version": "global/tiny_v1"})
    target.invoke(make_features(tier="platinum"))
    queue_invoke_result(moto_url, {"propensity_score": 0.5, "model_version": "global/tiny_v1"})
    target.invoke(make_features(tier="gold"), target_model="global.tar.gz")
    headers = [h.get("X-Amzn-SageMaker-Target-Model", b"").decode() for h in sent]
    assert headers == ["tier=gold.tar.gz", "global.tar.gz", "global.tar.gz"]
    assert len(target.down()["deleted"]) == 3


def test_a_directory_that_is_not_a_package_is_refused(tmp_path, moto_url, aws_env):
    with pytest.raises(UsageError, match="not a multi-model or variants package"):
        target_for(tmp_path, moto_url).up(tmp_path)


def variants_package(root):
    """What `deploy package --variants champion=90,challenger=10` writes."""
    root.mkdir()
    manifest = {"format": "loyaltylens-variants/1", "variants": {}}
    for name, weight, version in (("champion", 90, "tiny_v1"), ("challenger", 10, "tiny_v2")):
        write_tiny_archive(root / f"{name}.tar.gz", version=version)
        manifest["variants"][name] = {"archive": f"{name}.tar.gz", "weight": weight, "model_version": version}
    (root / "variants.json").write_text(json.dumps(manifest))
    return root


def test_production_variants_with_weights_and_a_weight_update(tmp_path, moto_url, aws_env):
    target = target_for(tmp_path, moto_url, endpoint_name="ll-variants")
    up = target.up(variants_package(tmp_path / "variants"))
    assert {k: v["weight"] for k, v in up["variants"].items()} == {"champion": 90.0, "challenger": 10.0}
    sm = client("sagemaker", moto_url)
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName="ll-variants")["EndpointConfigName"])
    variants = {v["VariantName"]: v for v in config["ProductionVariants"]}
    assert {k: v["InitialVariantWeight"] for k, v in variants.items()} == {"champion": 90.0, "challenger": 10.0}
    for name, version in (("champion", "tiny_v1"), ("challenger", "tiny_v2")):
        model = sm.describe_model(ModelName=variants[name]["ModelName"])
        assert {"Key": "loyaltylens:model_version", "Value": version} in \
            sm.list_tags(ResourceArn=model["ModelArn"])["Tags"]
    queue = {"results": [{"Body": json.dumps({"propensity_score": 0.3, "model_version": "tiny_v2"}),
                          "ContentType": "application/json", "InvokedProductionVariant": "challenger",
                          "CustomAttributes": ""}]}
    request = urllib.request.Request(moto_url + "/moto-api/static/sagemaker/endpoint-results",
                                     data=json.dumps(queue).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    assert target.invoke(make_features())["variant"] == "challenger"

    sent: list[dict] = []
    target.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.UpdateEndpointWeightsAndCapacities", lambda params, **_: sent.append(params))
    assert target.update_weights({"champion": 50, "challenger": 50})["weights"] == {"champion": 50, "challenger": 50}
    assert sent[0]["DesiredWeightsAndCapacities"] == [{"VariantName": "champion", "DesiredWeight": 50},
                                                      {"VariantName": "challenger", "DesiredWeight": 50}]
    with pytest.raises(UsageError, match="no variant 'nope'"):
        target.update_weights({"nope": 1})
    assert len(target.down()["deleted"]) == 4  # endpoint, config, two models


def test_second_up_updates_the_endpoint_or_fails_in_one_line(tmp_path, moto_url, aws_env):
    """A second `up` calls UpdateEndpoint. moto 5 does not implement it and answers with an
    HTML 500 page: that must still reach the user as one short line."""
    archive = write_tiny_archive(tmp_path / "model.tar.gz")
    target = target_for(tmp_path, moto_url, endpoint_name="ll-update")
    target.up(archive)
    assert len(names(moto_url, "model", "ll-update")) == 1
    with pytest.raises(StageError) as info:
        target.up(archive)
    message = str(info.value)
    assert message.startswith("SageMaker UpdateEndpoint failed: 500")
    assert "\n" not in message and "<" not in message and len(message) < 320
    # The model and config made for the failed update were rolled back.
    assert len(names(moto_url, "model", "ll-update")) == 1
    assert len(names(moto_url, "config", "ll-update")) == 1
    target.down()


def test_non_json_reply_is_a_clear_error(tmp_path, moto_url, aws_env):
    target = target_for(tmp_path, moto_url, endpoint_name="ll-nonjson")
    target.up(write_tiny_archive(tmp_path / "model.tar.gz"))
    with pytest.raises(StageError, match="returned non-JSON"):
        target.invoke(make_features(customer_id="C31337"))  # moto's default body is not JSON
    target.down()


def test_missing_bucket_without_create_is_a_clear_error(tmp_path, moto_url, aws_env):
    target = target_for(tmp_path, moto_url, bucket="no-such-bucket-here", create_bucket=False)
    with pytest.raises(StageError, match="S3 bucket 'no-such-bucket-here' does not exist.*create_bucket"):
        target.up(write_tiny_archive(tmp_path / "model.tar.gz"))


def test_missing_role_is_a_config_error(tmp_path, moto_url, aws_env):
    target = target_for(tmp_path, moto_url, role_arn=None)
    with pytest.raises(ConfigError, match="role_arn is not set.*LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ROLE_ARN"):
        target.up(write_tiny_archive(tmp_path / "model.tar.gz"))


@pytest.mark.parametrize("field, value", [
    ("role_arn", "not-an-arn"), ("region", "mars-1"), ("instance_type", "m5.large"), ("endpoint_name", "bad_name!"),
])
def test_invalid_settings_are_rejected(field, value):
    with pytest.raises(ValueError):
        SageMakerSettings(**{field: value})


def test_invoke_without_endpoint(tmp_path, moto_url, aws_env):
    with pytest.raises(UsageError, match="no SageMaker endpoint 'll-never' in us-east-1"):
        target_for(tmp_path, moto_url, endpoint_name="ll-never").invoke(make_features())


def test_missing_archive(tmp_path, moto_url, aws_env):
    with pytest.raises(UsageError, match="does not exist"):
        target_for(tmp_path, moto_url).up(tmp_path / "none.tar.gz")


def test_access_denied_names_the_operation_and_secrets_stay_secret(tmp_path, monkeypatch, capsys):
    """moto with IAM enforcement: a user without a policy is denied."""
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="AKIAADMIN0000000", aws_secret_access_key="admin")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIAADMIN0000000",
                     aws_secret_access_key="admin").create_bucket(Bucket="loyaltylens-models")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        target = target_for(tmp_path, url, create_bucket=False)
        with pytest.raises(StageError) as info:
            target.up(write_tiny_archive(tmp_path / "model.tar.gz"))
        message = str(info.value)
        assert "access is denied" in message or "AccessDenied" in message
        assert key["SecretAccessKey"] not in message and key["AccessKeyId"] not in message
    finally:
        proc.kill()
        proc.wait()
