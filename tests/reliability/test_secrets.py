"""Secrets never appear in output, logs or files, in --debug and --json alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loyaltylens_deploy_sagemaker.testing import start_moto
from loyaltylens_generator_openai.testing import StubOpenAIServer

pytestmark = pytest.mark.slow

MARKERS = {
    "OPENAI_API_KEY": "sk-MARKER-openai-0000",
    "LOYALTYLENS_GENERATOR_OPENAI__API_KEY": "sk-MARKER-config-1111",
    "AWS_ACCESS_KEY_ID": "AKIAMARKER22222222",
    "AWS_SECRET_ACCESS_KEY": "MARKER-aws-secret-3333",
    "AWS_SESSION_TOKEN": "MARKER-aws-session-4444",
    "WEAVIATE_API_KEY": "MARKER-weaviate-5555",
    "REDIS_PASSWORD": "MARKER-redis-6666",
    # a password inside a URL-valued setting (Redis down on purpose: the error names the URL)
    "LOYALTYLENS_FEATURE_STORE_REDIS__URL": "redis://:MARKER-redis-url-7777@127.0.0.1:9/0",
}


def leaks(text: str) -> list[str]:
    return [name for name, value in MARKERS.items() if value in text]


def test_no_secret_in_any_output_log_or_file(cli, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("C001\nC002\nC003\n")
    outputs: list[str] = []
    with StubOpenAIServer() as stub:
        moto, moto_url = start_moto()
        try:
            llm = {"LOYALTYLENS_GENERATOR_OPENAI__BASE_URL": stub.base_url}
            sagemaker = {"LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ENDPOINT_URL": moto_url,
                         "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ROLE_ARN": "arn:aws:iam::123456789012:role/LL",
                         "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__BUCKET": "ll-secrets",
                         "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__CREATE_BUCKET": "true"}
            env = {**MARKERS, **llm, **sagemaker}
            commands = [
                ["run", "C001", "--json"], ["run", "C002"],
                ["--use", "generator=openai", "run", "C003", "--json"],
                ["plugins", "--json"], ["plugins"], ["config", "show", "--json"], ["config", "show"],
                ["--use", "generator=openai", "config", "show", "--json"],
                ["--use", "generator=openai", "batch", "--ids", str(ids), "--out", str(tmp_path / "r.parquet"), "--json"],
                ["index"], ["deploy", "package", "--json"],
                ["deploy", "up", "--json"], ["deploy", "invoke", "C001", "--json"], ["deploy", "status", "--json"],
                ["deploy", "down", "--json"],
                ["deploy", "up", "--target", "sagemaker", "--json"], ["deploy", "status", "--target", "sagemaker"],
                ["deploy", "down", "--target", "sagemaker", "--json"],
                # failures, where a careless error path would be most tempting to print config
                ["run", "C999999"], ["--use", "retriever=weaviate", "run", "C001"],
                ["--use", "feature_store=redis", "run", "C001"], ["--use", "feature_store=redis", "config", "show"],
                ["features", "materialize", "--to", "redis", "--json"],
                ["deploy", "invoke", "C001", "--target", "sagemaker"],
            ]
            stub.script("unauthorized")  # one failing LLM call on the way
            for command in commands:
                for debug in ([], ["--debug"]):
                    proc = cli(*debug, *command, extra_env=env)
                    outputs.append(f"$ {' '.join(debug + command)}\n{proc.stdout}\n{proc.stderr}")
            # the key did reach the servers that need it: masking is not just absence
            assert any(r["authorization"].endswith("MARKER-config-1111") for r in stub.requests)
        finally:
            moto.kill()
            moto.wait()
    leaked = [(o.splitlines()[0], leaks(o)) for o in outputs if leaks(o)]
    assert leaked == []
    written = [p for root in (cli.data_dir, tmp_path) for p in Path(root).rglob("*") if p.is_file()]
    assert written  # logs, state files, parquet, archives, duckdb
    for path in written:
        data = path.read_bytes()
        assert not [n for n, v in MARKERS.items() if v.encode() in data], path
    shown = json.loads(cli("--use", "generator=openai", "config", "show", "--json", extra_env={**MARKERS, **llm}).stdout)
    assert shown["settings"]["generator.openai"]["api_key"]["value"] == "********"
