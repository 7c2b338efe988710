"""The stage table is the one source of stage facts, and capabilities are declared, not guessed."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loyaltylens_core.kernel import contracts, hookspecs
from loyaltylens_core.cli import app
from loyaltylens_core.kernel.config import DEFAULT_STAGES
from loyaltylens_core.kernel.stages import RUN_STAGES, STAGE_TABLE, STAGES
from loyaltylens_core.sdk.testing import FakePlugin, FakeRetriever


def test_every_stage_has_its_hookspec_protocol_and_known_capabilities():
    for stage in STAGE_TABLE:
        assert hasattr(getattr(hookspecs, stage.hook), "loyaltylens_spec"), stage.hook
        assert contracts.STAGE_PROTOCOLS[stage.name] is getattr(contracts, stage.protocol)
        assert set(stage.capabilities) <= set(contracts.CAPABILITIES), stage.name
    assert RUN_STAGES == ("feature_store", "propensity", "retriever", "decision", "generator")
    assert DEFAULT_STAGES == {s.name: s.default for s in STAGE_TABLE}


def test_every_default_plugin_is_installed_for_its_stage():
    from loyaltylens_core.kernel.registry import load_registry

    registry = load_registry()
    for stage in STAGE_TABLE:
        assert registry.find(stage.name, stage.default) is not None, stage.name


def test_fake_plugin_registers_fake_for_every_stage_from_the_table(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline()
    for stage in STAGES:
        assert pipeline.implementation(stage).name == "fake"
    assert pipeline.run("C001").top_offer is not None


def test_capabilities_are_checked_once_when_built(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline()
    assert "BatchFeatureStore" in pipeline.capabilities("feature_store")
    assert "Indexable" not in pipeline.capabilities("retriever")
    assert pipeline.capabilities("retriever") is pipeline.capabilities("retriever")


class ClosingRetriever(FakeRetriever):
    closed = 0

    def close(self) -> None:
        ClosingRetriever.closed += 1


def test_close_closes_every_closeable_component_once(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=ClosingRetriever()))
    pipeline.run("C001")
    assert "Closeable" in pipeline.capabilities("retriever")
    pipeline.close()
    pipeline.close()
    assert ClosingRetriever.closed == 1


class FallingBackRetriever(FakeRetriever):
    fallback_reason: str | None = "server_down"


def test_a_component_reporting_its_fallback_is_recorded_in_the_result(loyaltylens_pipeline):
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=FallingBackRetriever()))
    assert "retriever:server_down" in pipeline.run("C001").fallbacks
    rows = pipeline.run_chunk(["C001", "C002"])
    assert all("retriever:server_down" in row["fallbacks"] for row in rows)


def test_plugins_json_lists_the_capabilities_of_active_components(tmp_path, monkeypatch):
    monkeypatch.setenv("LOYALTYLENS_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["stage"], r["name"]): r for r in json.loads(result.stdout)}
    retriever = rows[("retriever", "duckdb")]
    assert retriever["status"] == "active"
    assert {"Indexable", "BatchRetriever", "Closeable", "Preparable"} <= set(retriever["capabilities"])
    assert {"Trainable", "Exportable"} <= set(rows[("propensity", "torch")]["capabilities"])
    assert rows[("generator", "openai")]["capabilities"] is None  # not active: not built
    assert not (tmp_path / "demo").exists()  # built, not prepared: no demo data, training or index

