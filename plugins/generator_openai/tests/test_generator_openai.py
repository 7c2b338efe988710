"""The real openai client over real HTTP against a local OpenAI-compatible server."""

from __future__ import annotations

import time

import pytest

from loyaltylens_core.kernel.adapters import template_variables
from loyaltylens_core.kernel.errors import ConfigError, StageError
from loyaltylens_core.sdk.testing import FAKE_OFFERS, FakeGenerator, FakePropensity, make_context, make_features
from loyaltylens_generator_openai import OpenAIGeneratorSettings, build
from loyaltylens_generator_openai.testing import StubOpenAIServer


@pytest.fixture
def stub():
    with StubOpenAIServer() as server:
        yield server


def variables(customer_id="C001"):
    f = make_features(customer_id)
    return template_variables(f, FakePropensity(0.7).predict(f), FAKE_OFFERS[0])


def generator(tmp_path, stub, monkeypatch=None, **settings):
    defaults = {"base_url": stub.base_url, "timeout_s": 2, "max_retries": 2}
    context = make_context(tmp_path, "generator", "openai",
                           fallbacks={("generator", "template"): FakeGenerator()})
    return build(OpenAIGeneratorSettings(**{**defaults, **settings}), context)


def test_structured_output_request_and_valid_copy(tmp_path, stub):
    copy = generator(tmp_path, stub, model="my-local-model").generate(variables())
    assert copy.headline == "Just for you: Free coffee"
    assert copy.cta == "Claim now" and copy.fallback is None
    assert copy.prompt_version == "openai-v1"
    body = stub.requests[0]["body"]
    assert stub.requests[0]["content_type"] == "application/json"
    assert set(body) == {"model", "messages", "temperature", "response_format"}
    assert body["model"] == "my-local-model"
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["type"] == "json_schema" and schema["required"] == ["headline", "body", "cta"]
    assert schema["additionalProperties"] is False
    user = body["messages"][1]["content"]
    assert "Offer: Free coffee" in user and "gold tier" in user and "{" not in user


def test_invalid_json_gets_one_repair_turn(tmp_path, stub):
    stub.script("invalid_json", "ok")
    copy = generator(tmp_path, stub).generate(variables())
    assert copy.fallback is None and copy.headline.startswith("Just for you")
    repair = stub.requests[1]["body"]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "{not json"}
    assert "not valid JSON" in repair[-1]["content"]


@pytest.mark.parametrize("first, second", [("invalid_json", "invalid_json"), ("too_long", "too_long"),
                                           ("empty_field", "invalid_json")])
def test_invalid_twice_falls_back_to_the_template_copy(tmp_path, stub, first, second):
    stub.script(first, second)
    copy = generator(tmp_path, stub).generate(variables())
    assert copy.fallback == "llm_invalid_output"
    assert copy.prompt_version == "fake-template-1"
    assert len(stub.requests) == 2


@pytest.mark.parametrize("behaviour", ["no_choices", "not_a_completion"])
def test_a_reply_that_is_not_a_completion_is_repaired_then_falls_back(tmp_path, stub, behaviour):
    stub.script(behaviour, "ok", behaviour, behaviour)
    gen = generator(tmp_path, stub)
    assert gen.generate(variables()).fallback is None
    assert "the reply was empty" in stub.requests[1]["body"]["messages"][-1]["content"]
    assert gen.generate(variables()).fallback == "llm_invalid_output"
    assert len(stub.requests) == 4


def test_length_limit_problem_is_explained_in_the_repair(tmp_path, stub):
    stub.script("too_long", "ok")
    generator(tmp_path, stub).generate(variables())
    assert "'headline' has 500 characters, the limit is 80" in stub.requests[1]["body"]["messages"][-1]["content"]


def test_429_is_retried_then_succeeds(tmp_path, stub):
    stub.script("rate_limit", "rate_limit", "ok")
    copy = generator(tmp_path, stub, max_retries=2).generate(variables())
    assert copy.fallback is None
    assert [r["behaviour"] for r in stub.requests] == ["rate_limit", "rate_limit", "ok"]


@pytest.mark.parametrize("behaviour, reason", [("rate_limit", "llm_rate_limited"), ("server_error", "llm_server_error")])
def test_persistent_errors_fall_back_after_bounded_retries(tmp_path, stub, behaviour, reason):
    stub.default = behaviour
    copy = generator(tmp_path, stub, max_retries=1).generate(variables())
    assert copy.fallback == reason
    assert len(stub.requests) == 2  # first try + 1 retry, then no more


def test_hang_times_out_and_falls_back(tmp_path, stub):
    stub.default = "hang"
    stub.hang_s = 6
    started = time.monotonic()
    copy = generator(tmp_path, stub, timeout_s=0.3, max_retries=0).generate(variables())
    assert copy.fallback == "llm_timeout"
    assert time.monotonic() - started < 5  # gave up at the time-out, did not wait for the reply


def test_on_error_raise_gives_a_clear_error(tmp_path, stub):
    stub.default = "server_error"
    with pytest.raises(StageError, match=r"failed after 0 retries: llm_server_error"):
        generator(tmp_path, stub, max_retries=0, on_error="raise").generate(variables())


def test_rejected_key_is_a_config_error_even_with_fallback(tmp_path, stub):
    stub.default = "unauthorized"
    with pytest.raises(ConfigError, match=r"rejected the API key \(401\)"):
        generator(tmp_path, stub).generate(variables())


def test_key_comes_from_env_and_is_never_in_errors(tmp_path, stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-marker-secret")
    stub.default = "unauthorized"
    with pytest.raises(ConfigError) as info:
        generator(tmp_path, stub).generate(variables())
    assert stub.requests[0]["authorization"] == "Bearer sk-marker-secret"
    assert "sk-marker-secret" not in str(info.value)


def test_missing_key_for_the_real_openai_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    context = make_context(tmp_path)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        build(OpenAIGeneratorSettings(), context)


def test_unknown_prompt_placeholder_fails_at_load(tmp_path, stub):
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('[v2]\nsystem = "Write copy."\nuser = "Offer {offer_titel}"\n')
    with pytest.raises(ConfigError, match=r"\{offer_titel\}, which the adapter cannot fill"):
        generator(tmp_path, stub, prompt_version="v2", prompts=prompts)


def test_custom_prompt_version_is_reported(tmp_path, stub):
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('[v2]\nsystem = "Short copy, headline under {max_headline_chars} chars."\n'
                       'user = "Offer: {offer_title}"\n')
    copy = generator(tmp_path, stub, prompt_version="v2", prompts=prompts).generate(variables())
    assert copy.prompt_version == "openai-v2"
    assert stub.requests[0]["body"]["messages"][0]["content"] == "Short copy, headline under 80 chars."


def test_generate_many_runs_concurrently_and_keeps_order(tmp_path):
    with StubOpenAIServer(latency_s=0.05) as stub:
        gen = generator(tmp_path, stub, concurrency=8)
        batch = [variables(f"C{i:03d}") for i in range(24)]
        stub.script("invalid_json")  # one customer needs a repair turn; order must hold anyway
        copies = gen.generate_many(batch)
    assert len(copies) == 24 and all(c.fallback is None for c in copies)
    assert [c.headline for c in copies] == ["Just for you: Free coffee"] * 24
    # Requests overlapped, and never more than the configured bound (throughput: benchmarks/).
    assert 2 <= stub.max_in_flight <= 8


def test_json_object_mode_for_servers_without_schemas(tmp_path, stub):
    generator(tmp_path, stub, structured_output="json_object").generate(variables())
    assert stub.requests[0]["body"]["response_format"] == {"type": "json_object"}
