"""Selection and settings precedence: CLI > env > file > defaults, and no silent typos."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from loyaltylens_core.kernel.config import DEFAULT_STAGES, load_config
from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.kernel.hookspecs import hookimpl
from loyaltylens_core.kernel.registry import load_registry
from loyaltylens_core.sdk.testing import FakePlugin


class RemoteSettings(BaseModel):
    model_config = {"extra": "forbid"}
    url: str = "http://localhost:8080"
    port: int = 50051
    api_key: SecretStr = SecretStr("")


class RemotePlugin:
    @hookimpl
    def register_retrievers(self, register):
        register("remote", lambda s, c: None, settings=RemoteSettings)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loyaltylens.toml"
    path.write_text(text)
    return path


def registry():
    return load_registry([FakePlugin(), RemotePlugin()], entry_points=False)


def test_defaults_when_nothing_is_configured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.stages == DEFAULT_STAGES
    assert config.core.top_k == 3


def test_file_selects_a_stage(tmp_path):
    path = write(tmp_path, '[stages]\nretriever = "remote"\n')
    config = load_config(path, env={})
    assert config.stages["retriever"] == "remote"
    assert config.sources["stages.retriever"] == f"file:{path}"


def test_env_beats_file_and_cli_beats_env(tmp_path):
    path = write(tmp_path, '[stages]\nretriever = "remote"\n')
    env = {"LOYALTYLENS_RETRIEVER": "fake"}
    assert load_config(path, env=env).stages["retriever"] == "fake"
    config = load_config(path, env=env, use=["retriever=duckdb"])
    assert config.stages["retriever"] == "duckdb"
    assert config.sources["stages.retriever"] == "cli:--use"


def test_config_file_found_through_env_variable(tmp_path):
    path = write(tmp_path, "top_k = 7\n")
    config = load_config(env={"LOYALTYLENS_CONFIG": str(path)})
    assert config.core.top_k == 7


def test_legacy_deploy_target_variable_still_selects_the_target():
    config = load_config(env={"DEPLOY_TARGET": "sagemaker"})
    assert config.stages["deploy_target"] == "sagemaker"
    assert config.sources["stages.deploy_target"] == "env:DEPLOY_TARGET"
    # The namespaced variable wins over the legacy one.
    config = load_config(env={"DEPLOY_TARGET": "sagemaker", "LOYALTYLENS_DEPLOY_TARGET": "vertex"})
    assert config.stages["deploy_target"] == "vertex"


def test_plugin_settings_from_file_then_env_validated_by_the_plugin_model(tmp_path):
    path = write(tmp_path, '[retriever.remote]\nurl = "http://weaviate:8080"\nport = 1\n')
    config = load_config(path, env={"LOYALTYLENS_RETRIEVER_REMOTE__PORT": "6000"})
    settings = config.settings_for(registry().get("retriever", "remote"))
    assert settings.url == "http://weaviate:8080"
    assert settings.port == 6000  # env beats file, and the string is coerced by the model


def test_unknown_setting_is_an_error_with_a_suggestion(tmp_path):
    path = write(tmp_path, '[retriever.remote]\nulr = "x"\n')
    config = load_config(path, env={})
    with pytest.raises(ConfigError, match=r"no setting 'ulr'.*did you mean 'url'"):
        config.settings_for(registry().get("retriever", "remote"))


def test_invalid_setting_value_names_field_and_source(tmp_path):
    config = load_config(env={"LOYALTYLENS_RETRIEVER_REMOTE__PORT": "not-a-port"})
    with pytest.raises(ConfigError, match=r"'port' is invalid \(from env:LOYALTYLENS_RETRIEVER_REMOTE__PORT\)"):
        config.settings_for(registry().get("retriever", "remote"))


def test_settings_table_for_a_plugin_that_is_not_installed(tmp_path):
    path = write(tmp_path, '[retriever.remot]\nurl = "x"\n')
    config = load_config(path, env={})
    with pytest.raises(ConfigError, match=r"name no installed plugin.*did you mean 'remote'"):
        config.validate_against(registry(), needed=())


@pytest.mark.parametrize(
    "text, message",
    [
        ("[stages\n", "not valid TOML"),
        ("top_kk = 3\n", "unknown key 'top_kk'.*did you mean 'top_k'"),
        ('[stages]\nretreiver = "x"\n', "unknown stage 'retreiver'.*did you mean 'retriever'"),
        ("top_k = 0\n", "'top_k' is invalid"),
        ('[retriever]\nurl = "x"\n', "must hold one table per plugin"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_unknown_loyaltylens_variable_is_an_error_not_ignored():
    with pytest.raises(ConfigError, match="LOYALTYLENS_RETREIVER means nothing"):
        load_config(env={"LOYALTYLENS_RETREIVER": "fake"})


def test_bad_use_flag():
    with pytest.raises(ConfigError, match="not STAGE=NAME"):
        load_config(env={}, use=["retriever"])


def test_secrets_are_masked_in_describe(tmp_path):
    config = load_config(
        env={"LOYALTYLENS_RETRIEVER": "remote", "LOYALTYLENS_RETRIEVER_REMOTE__API_KEY": "sk-marker-123"}
    )
    described = config.describe(registry())
    assert described["settings"]["retriever.remote"]["api_key"]["value"] == "********"
    assert "sk-marker-123" not in repr(described)
