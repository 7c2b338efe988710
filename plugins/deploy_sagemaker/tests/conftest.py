from __future__ import annotations

import pytest

from loyaltylens_deploy_sagemaker.testing import start_moto


@pytest.fixture
def aws_env(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMARKER000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-marker-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def moto_url():
    proc, url = start_moto()
    yield url
    proc.kill()
    proc.wait()
