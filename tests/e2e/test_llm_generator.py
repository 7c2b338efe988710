"""The OpenAI generator inside the real pipeline: its fallback is the real template plugin."""

from __future__ import annotations

import json

import pytest

from loyaltylens_generator_openai.testing import StubOpenAIServer

pytestmark = pytest.mark.slow


@pytest.fixture
def stub():
    with StubOpenAIServer() as server:
        yield server


def run(cli, stub, *args, **env):
    extra = {"LOYALTYLENS_GENERATOR": "openai", "LOYALTYLENS_GENERATOR_OPENAI__BASE_URL": stub.base_url,
             "LOYALTYLENS_GENERATOR_OPENAI__MAX_RETRIES": "1", "OPENAI_API_KEY": "sk-e2e-marker", **env}
    return cli(*args, extra_env=extra)


def test_llm_copy_in_a_run(cli, stub):
    proc = run(cli, stub, "run", "C002", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["copy"]["headline"] == f"Just for you: {result['top_offer']['title']}"[:80]
    assert result["copy"]["prompt_version"] == "openai-v1"
    assert result["plugins"]["generator"]["distribution"] == "loyaltylens-generator-openai"
    assert result["fallbacks"] == []


def test_server_down_falls_back_to_templates_and_says_why(cli, stub):
    stub.default = "server_error"
    proc = run(cli, stub, "run", "C002", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["copy"]["prompt_version"] == "template-v1"
    assert result["fallbacks"] == ["generator:llm_server_error"]


def test_on_error_raise_is_one_line_and_no_secret(cli, stub):
    stub.default = "rate_limit"
    proc = run(cli, stub, "run", "C002", LOYALTYLENS_GENERATOR_OPENAI__ON_ERROR="raise")
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines()[-1].startswith("error: LLM call to http://127.0.0.1")
    assert "sk-e2e-marker" not in proc.stderr + proc.stdout


def test_config_show_masks_the_key(cli, stub):
    proc = run(cli, stub, "config", "show", "--json", LOYALTYLENS_GENERATOR_OPENAI__API_KEY="sk-in-config-marker")
    assert proc.returncode == 0, proc.stderr
    assert "sk-in-config-marker" not in proc.stdout
    assert json.loads(proc.stdout)["settings"]["generator.openai"]["api_key"]["value"] == "********"
