"""Deploying the real trained model: the archive the CLI packages loads in the real
SageMaker handler and in deploy_local, and both return the local predictor's score."""

from __future__ import annotations

import json
import tarfile

import pytest

pytestmark = pytest.mark.slow

CUSTOMERS = ("C001", "C002", "C123", "C999")


def local_scores(cli) -> dict[str, float]:
    return {c: json.loads(cli("run", c, "--json").stdout)["propensity"]["score"] for c in CUSTOMERS}


def features(cli, customer: str) -> dict:
    return json.loads(cli("run", customer, "--json").stdout)["features"]


@pytest.fixture(scope="module")
def archive(cli):
    proc = cli("deploy", "package", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model_version"].startswith("propensity_v")
    return info["archive"]


def test_archive_has_the_sagemaker_layout(archive):
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["code/inference.py", "model.pt", "spec.json"]


def test_real_sagemaker_handler_returns_the_local_predictors_score(cli, archive):
    from loyaltylens_deploy_sagemaker.container_check import invoke_in_container_handler

    expected = local_scores(cli)
    replies = invoke_in_container_handler(archive, [features(cli, c) for c in CUSTOMERS])
    for customer, reply in zip(CUSTOMERS, replies):
        assert reply["propensity_score"] == pytest.approx(expected[customer], abs=1e-6)


def test_deploy_local_lifecycle_through_the_cli(cli, archive):
    expected = local_scores(cli)
    up = cli("deploy", "up", "--archive", archive, "--json")
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    try:
        assert info["status"] == "InService" and info["url"].startswith("http://127.0.0.1:")
        for customer in CUSTOMERS:
            reply = json.loads(cli("deploy", "invoke", customer, "--json").stdout)
            assert set(reply) >= {"propensity_score", "model_version"}
            assert reply["propensity_score"] == pytest.approx(expected[customer], abs=1e-6)
        assert json.loads(cli("deploy", "status", "--json").stdout)["status"] == "InService"
    finally:
        down = cli("deploy", "down", "--json")
    assert json.loads(down.stdout)["status"] == "deleted"
    assert json.loads(cli("deploy", "status", "--json").stdout)["status"] == "absent"
    gone = cli("deploy", "invoke", "C001")
    assert gone.returncode == 2 and "no local endpoint is running" in gone.stderr


def test_sagemaker_target_selected_by_legacy_variable_against_moto(cli, archive):
    from loyaltylens_deploy_sagemaker.testing import start_moto

    proc, url = start_moto()
    env = {
        "DEPLOY_TARGET": "sagemaker",
        "AWS_ACCESS_KEY_ID": "AKIAMARKER000000", "AWS_SECRET_ACCESS_KEY": "secret-marker-value",
        "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ENDPOINT_URL": url,
        "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ROLE_ARN": "arn:aws:iam::123456789012:role/LL",
        "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__BUCKET": "ll-e2e-models",
        "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__CREATE_BUCKET": "true",
    }
    try:
        up = cli("deploy", "up", "--archive", archive, "--json", extra_env=env)
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["model_data"].startswith("s3://ll-e2e-models/")
        status = cli("deploy", "status", "--json", extra_env=env)
        assert json.loads(status.stdout)["status"] == "InService"
        down = cli("deploy", "down", "--json", extra_env=env)
        assert len(json.loads(down.stdout)["deleted"]) == 3
        for output in (up.stdout + up.stderr, status.stdout, down.stdout):
            assert "secret-marker-value" not in output and "AKIAMARKER000000" not in output
    finally:
        proc.kill()
        proc.wait()


def test_real_model_mar_in_torchserve_returns_the_local_predictors_score(cli, archive, tmp_path):
    from loyaltylens_deploy_vertex.mar import build_mar, load_in_torchserve

    expected = local_scores(cli)
    predict = load_in_torchserve(build_mar(__import__("pathlib").Path(archive), tmp_path / "mar"), tmp_path / "serve")
    (reply,) = predict([{"instances": [features(cli, c) for c in CUSTOMERS]}])
    for customer, prediction in zip(CUSTOMERS, reply["predictions"]):
        assert prediction["propensity_score"] == pytest.approx(expected[customer], abs=1e-6)


def test_vertex_target_through_the_cli(cli, archive):
    from loyaltylens_deploy_vertex.testing import LocalVertex, gcs_fetcher, start_storage_emulator

    gcs_proc, gcs = start_storage_emulator()
    try:
        with LocalVertex(gcs_fetcher(gcs)) as vertex:
            env = {"LOYALTYLENS_DEPLOY_TARGET": "vertex",
                   "LOYALTYLENS_DEPLOY_TARGET_VERTEX__PROJECT": "ll-e2e-project",
                   "LOYALTYLENS_DEPLOY_TARGET_VERTEX__BUCKET": "ll-e2e-vertex",
                   "LOYALTYLENS_DEPLOY_TARGET_VERTEX__CREATE_BUCKET": "true",
                   "LOYALTYLENS_DEPLOY_TARGET_VERTEX__API_ENDPOINT": vertex.url,
                   "LOYALTYLENS_DEPLOY_TARGET_VERTEX__STORAGE_ENDPOINT": gcs,
                   "LOYALTYLENS_DEPLOY_TARGET_VERTEX__ANONYMOUS": "true"}
            up = cli("deploy", "up", "--archive", archive, "--json", extra_env=env)
            assert up.returncode == 0, up.stderr
            expected = local_scores(cli)["C002"]
            reply = json.loads(cli("deploy", "invoke", "C002", "--json", extra_env=env).stdout)
            assert reply["propensity_score"] == pytest.approx(expected, abs=1e-6)
            assert json.loads(cli("deploy", "status", "--json", extra_env=env).stdout)["status"] == "deployed"
            # Vertex has no multi-model endpoints (no ServesManyModels); it splits traffic
            # (SplitsTraffic), but this endpoint was deployed without variants.
            many = cli("deploy", "invoke", "C002", "--target-model", "global.tar.gz", extra_env=env)
            assert many.returncode == 2 and "has no multi-model endpoints" in many.stderr
            weights = cli("deploy", "weights", "champion=50", extra_env=env)
            assert weights.returncode == 2 and "has no variants" in weights.stderr, weights.stderr
            down = json.loads(cli("deploy", "down", "--json", extra_env=env).stdout)
            assert down["status"] == "deleted"
    finally:
        gcs_proc.kill()
        gcs_proc.wait()
