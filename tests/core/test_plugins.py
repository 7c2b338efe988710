"""Discovery and resolution: unknown names, broken plugins, duplicate registrations."""

from __future__ import annotations

import pytest

from loyaltylens_core.kernel.errors import ConfigError, PluginError
from loyaltylens_core.kernel.hookspecs import hookimpl
from loyaltylens_core.kernel.registry import load_registry
from loyaltylens_core.sdk.testing import FakePlugin


class ExplodingRegistration:
    @hookimpl
    def register_generators(self, register):
        raise RuntimeError("boom while registering")


class Duplicate:
    @hookimpl
    def register_retrievers(self, register):
        register("fake", lambda s, c: None)


def test_unknown_name_lists_installed_and_suggests_closest():
    registry = load_registry([FakePlugin()], entry_points=False)
    with pytest.raises(ConfigError) as info:
        registry.get("retriever", "fak")
    assert "no retriever plugin named 'fak'" in str(info.value)
    assert "installed: fake" in str(info.value)
    assert "did you mean 'fake'" in str(info.value)


def test_unknown_stage():
    registry = load_registry([FakePlugin()], entry_points=False)
    with pytest.raises(ConfigError, match="unknown stage 'retreiver'"):
        registry.get("retreiver", "fake")


def test_names_match_across_dash_and_underscore():
    class Dashed:
        @hookimpl
        def register_embedders(self, register):
            register("sentence-transformers", lambda s, c: None)

    registry = load_registry([Dashed()], entry_points=False)
    assert registry.get("embedder", "SENTENCE_TRANSFORMERS").name == "sentence-transformers"


def test_plugin_that_breaks_while_registering_is_isolated_and_reported():
    registry = load_registry([FakePlugin(), ExplodingRegistration()], entry_points=False)
    assert registry.names("generator") == ["fake"]
    assert len(registry.broken) == 1
    assert "boom while registering" in registry.broken[0].error
    with pytest.raises(ConfigError, match="failed to load: .*boom while registering"):
        registry.get("generator", "missing")


def test_two_plugins_claiming_one_name_is_an_error_when_selected():
    registry = load_registry([FakePlugin(), Duplicate()], entry_points=False)
    with pytest.raises(ConfigError, match="registered by more than one plugin"):
        registry.get("retriever", "fake")
    # Other stages are unaffected.
    assert registry.get("generator", "fake").name == "fake"


def test_component_missing_protocol_methods_is_named(loyaltylens_pipeline):
    class NotARetriever:
        def search(self, text):
            return []

    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=NotARetriever()))
    with pytest.raises(PluginError, match=r"retriever plugin 'fake'.*not a Retriever: missing retrieve"):
        pipeline.run("C001")


def test_factory_that_raises_is_reported_with_plugin_name(loyaltylens_pipeline):
    class Broken:
        @hookimpl
        def register_generators(self, register):
            def factory(settings, context):
                raise ImportError("No module named 'openai'")

            register("broken", factory)

    pipeline = loyaltylens_pipeline(extra_plugins=[Broken()], use=["generator=broken"])
    with pytest.raises(PluginError, match="generator plugin 'broken' failed to start: ImportError"):
        pipeline.run("C001")
