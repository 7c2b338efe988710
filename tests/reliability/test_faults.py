"""Faults in the services around the pipeline: each handled as its issue specified."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import boto3
import pytest

from loyaltylens_deploy_sagemaker.testing import start_moto
from loyaltylens_generator_openai.testing import StubOpenAIServer
from loyaltylens_retriever_weaviate.testing import free_port

from .helpers import assert_one_clear_line

pytestmark = pytest.mark.slow


def llm_env(stub, **extra):
    return {"LOYALTYLENS_GENERATOR": "openai", "LOYALTYLENS_GENERATOR_OPENAI__BASE_URL": stub.base_url,
            "LOYALTYLENS_GENERATOR_OPENAI__MAX_RETRIES": "1", "LOYALTYLENS_GENERATOR_OPENAI__TIMEOUT_S": "0.5",
            **extra}


@pytest.mark.parametrize("behaviour, reason", [
    ("rate_limit", "llm_rate_limited"), ("server_error", "llm_server_error"), ("hang", "llm_timeout"),
    ("invalid_json", "llm_invalid_output"),
])
def test_generator_faults_fall_back_to_templates(built, behaviour, reason):
    with StubOpenAIServer(default=behaviour) as stub:
        stub.hang_s = 2
        proc = built("run", "C002", "--json", extra_env=llm_env(stub))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fallbacks"] == [f"generator:{reason}"]
    assert result["copy"]["prompt_version"] == "template-v1"


@pytest.mark.parametrize("behaviour, reason", [
    ("rate_limit", "llm_rate_limited"), ("server_error", "llm_server_error"), ("hang", "llm_timeout")])
def test_generator_faults_with_on_error_raise(built, behaviour, reason):
    with StubOpenAIServer(default=behaviour) as stub:
        stub.hang_s = 2
        proc = built("run", "C002", extra_env=llm_env(stub, LOYALTYLENS_GENERATOR_OPENAI__ON_ERROR="raise"))
    assert_one_clear_line(proc, 4, "LLM call to http://127.0.0.1", reason)


def test_vector_store_down(built):
    env = {"LOYALTYLENS_RETRIEVER": "weaviate",
           "LOYALTYLENS_RETRIEVER_WEAVIATE__URL": f"http://127.0.0.1:{free_port()}",
           "LOYALTYLENS_RETRIEVER_WEAVIATE__GRPC_PORT": str(free_port())}
    assert_one_clear_line(built("run", "C001", extra_env=env), 4, "Weaviate at http://127.0.0.1:", "is unreachable")
    fallback = built("run", "C001", "--json", extra_env={**env, "LOYALTYLENS_RETRIEVER_WEAVIATE__FALLBACK": "duckdb"})
    assert "retriever:weaviate_unreachable" in json.loads(fallback.stdout)["fallbacks"]


def sagemaker_env(url, **extra):
    return {"LOYALTYLENS_DEPLOY_TARGET": "sagemaker", "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ENDPOINT_URL": url,
            "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ROLE_ARN": "arn:aws:iam::123456789012:role/LL",
            "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__BUCKET": "ll-reliability", **extra}


def test_s3_access_denied(built):
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        admin = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIAADMIN0000000",
                     aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket="ll-reliability")
        env = sagemaker_env(url, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        result = built("deploy", "up", extra_env=env)
        line = assert_one_clear_line(result, 4, "access")
        assert key["SecretAccessKey"] not in result.stderr + result.stdout
        assert "IAM" in line or "AccessDenied" in line or "denied" in line
    finally:
        proc.kill()
        proc.wait()


def test_sagemaker_endpoint_missing(built):
    proc, url = start_moto()
    try:
        env = sagemaker_env(url, AWS_ACCESS_KEY_ID="AKIATEST00000000", AWS_SECRET_ACCESS_KEY="test")
        status = built("deploy", "status", "--json", extra_env=env)
        assert json.loads(status.stdout)["status"] == "absent"
        invoke = built("deploy", "invoke", "C001", extra_env=env)
        assert_one_clear_line(invoke, 2, "no SageMaker endpoint 'loyaltylens-propensity' in us-east-1",
                              "deploy up --target sagemaker")
        down = built("deploy", "down", "--json", extra_env=env)
        assert json.loads(down.stdout)["status"] == "absent"
    finally:
        proc.kill()
        proc.wait()


def test_local_endpoint_rejects_bad_bodies_and_stays_up(built):
    up = built("deploy", "up", "--json")
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["url"]
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        for body, content_type, status in [
            (b"{not json", "application/json", 400),
            (b"plain words", "text/plain", 415),
            (b"[" + b"1," * 700_000 + b"1]", "application/json", 413),
            (json.dumps({"tier": "gold"}).encode(), "application/json", 400),
        ]:
            request = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                             headers={"Content-Type": content_type})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10)
            assert err.value.code == status
        assert json.loads(built("deploy", "status", "--json").stdout)["status"] == "InService"
        reply = json.loads(built("deploy", "invoke", "C001", "--json").stdout)
        assert 0 <= reply["propensity_score"] <= 1
    finally:
        built("deploy", "down")
