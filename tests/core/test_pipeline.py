"""The pipeline over fake plugins: results, fallbacks, contract checks, events."""

from __future__ import annotations

import pytest

from loyaltylens_core.kernel.contracts import GeneratedCopy
from loyaltylens_core.kernel.errors import ContractViolation, CustomerNotFound, UsageError
from loyaltylens_core.kernel.hookspecs import hookimpl
from loyaltylens_core.kernel.registry import load_registry
from loyaltylens_core.kernel.pipeline import FALLBACK_THRESHOLD
from loyaltylens_core.sdk.testing import FakeGenerator, FakePlugin, FakePropensity, FakeRetriever, make_features


def test_run_returns_a_full_result(loyaltylens_pipeline):
    result = loyaltylens_pipeline().run("C001")
    assert result.customer_id == "C001"
    assert result.propensity.score == 0.6
    # score 0.6 admits offers with threshold <= 0.6: F1 (0.1) and F2 (0.5), not F3 (0.9)
    assert [c.offer.offer_id for c in result.candidates] == ["F1", "F2"]
    assert result.top_offer.offer_id == "F1"
    assert result.copy_.headline == "Gold member: Free coffee"
    assert result.copy_.cta == "Shop in the app"  # channel_preference=mobile through the adapter
    assert result.fallbacks == ()
    assert set(result.latency_ms) == {"feature_store", "propensity", "retriever", "decision", "generator", "total"}
    assert result.latency_ms["total"] >= result.latency_ms["retriever"]
    assert result.plugins["retriever"].name == "fake"


def test_threshold_fallback_is_recorded_when_every_offer_is_filtered(loyaltylens_pipeline):
    retriever = FakeRetriever()
    fake = FakePlugin(propensity=FakePropensity(0.05), retriever=retriever)
    result = loyaltylens_pipeline(fake=fake).run("C001")
    assert result.fallbacks == (FALLBACK_THRESHOLD,)
    assert result.top_offer.offer_id == "F1"
    assert [q.max_threshold for q in retriever.queries] == [0.05, None]


def test_query_is_natural_language_from_the_features(loyaltylens_pipeline):
    retriever = FakeRetriever()
    loyaltylens_pipeline(fake=FakePlugin(retriever=retriever)).run("C001")
    text = retriever.queries[0].text
    assert "gold tier" in text and "in the app" in text and "=" not in text


def test_json_shape_uses_copy_not_copy_(loyaltylens_pipeline):
    data = loyaltylens_pipeline().run("C001").to_json_dict()
    assert data["copy"]["headline"] and "copy_" not in data


def test_unknown_customer(loyaltylens_pipeline):
    with pytest.raises(CustomerNotFound):
        loyaltylens_pipeline().run("C999")


@pytest.mark.parametrize("bad", ["", "   ", "C 001", "C001;DROP", "../etc", "x" * 65])
def test_malformed_ids_never_reach_a_stage(loyaltylens_pipeline, bad):
    with pytest.raises(UsageError):
        loyaltylens_pipeline().run(bad)


def test_wrong_output_shape_names_plugin_stage_and_field(loyaltylens_pipeline):
    class BadPropensity:
        def predict(self, features):
            return {"customer_id": features.customer_id, "score": 1.7, "label": 1, "model_version": "x"}

    with pytest.raises(ContractViolation) as info:
        loyaltylens_pipeline(fake=FakePlugin(propensity=BadPropensity())).run("C001")
    message = str(info.value)
    assert "propensity plugin 'fake'" in message
    assert "PropensityScore" in message and "'score'" in message


def test_wrong_type_instead_of_a_list(loyaltylens_pipeline):
    class BadRetriever:
        def retrieve(self, query):
            return "OFF001"

    with pytest.raises(ContractViolation, match="returned str, expected a list of OfferCandidate"):
        loyaltylens_pipeline(fake=FakePlugin(retriever=BadRetriever())).run("C001")


def test_nan_features_are_a_contract_violation(loyaltylens_pipeline):
    class NanStore:
        def read_latest(self, customer_id, as_of=None):
            data = make_features(customer_id).model_dump()
            data["monetary_90d"] = float("nan")
            return data

    with pytest.raises(ContractViolation, match="'monetary_90d'"):
        loyaltylens_pipeline(fake=FakePlugin(feature_store=NanStore())).run("C001")


def test_generator_with_empty_headline_is_caught(loyaltylens_pipeline):
    class EmptyGenerator:
        prompt_version = "x"

        def generate(self, variables):
            return GeneratedCopy.model_construct(headline="", body="b", cta="c", prompt_version="x")

    with pytest.raises(ContractViolation, match="'headline'"):
        loyaltylens_pipeline(fake=FakePlugin(generator=EmptyGenerator())).run("C001")


def test_event_hooks_are_broadcast_to_every_plugin(loyaltylens_pipeline):
    seen: list[tuple[str, str]] = []

    class Tracer:
        @hookimpl
        def loyaltylens_after_stage(self, event):
            seen.append(("stage", event.stage))

        @hookimpl
        def loyaltylens_after_run(self, result):
            seen.append(("run", result.customer_id))

    class Audit:
        @hookimpl
        def loyaltylens_after_run(self, result):
            seen.append(("audit", result.top_offer.offer_id))

    loyaltylens_pipeline(extra_plugins=[Tracer(), Audit()]).run("C002")
    assert [s for kind, s in seen if kind == "stage"] == ["feature_store", "propensity", "retriever", "decision", "generator"]
    assert ("run", "C002") in seen and ("audit", "F1") in seen


def test_a_failing_event_listener_does_not_fail_the_run(loyaltylens_pipeline, capsys):
    class Broken:
        @hookimpl
        def loyaltylens_after_run(self, result):
            raise RuntimeError("metrics backend down")

    result = loyaltylens_pipeline(extra_plugins=[Broken()]).run("C001")
    assert result.top_offer is not None
    assert "metrics backend down" in capsys.readouterr().err


def test_components_are_built_lazily_and_once(loyaltylens_pipeline):
    built: list[str] = []

    class Counting:
        @hookimpl
        def register_generators(self, register):
            def factory(settings, context):
                built.append(context.name)
                return FakePlugin().components["generator"]

            register("counting", factory)

    pipeline = loyaltylens_pipeline(extra_plugins=[Counting()], use=["generator=counting"])
    assert built == []
    pipeline.run("C001")
    pipeline.run("C002")
    assert built == ["counting"]


def test_batched_methods_fall_back_to_loops(loyaltylens_pipeline):
    class SingleOnlyStore:
        def read_latest(self, customer_id, as_of=None):
            return make_features(customer_id)

    pipeline = loyaltylens_pipeline(fake=FakePlugin(feature_store=SingleOnlyStore()))
    features = pipeline.read_many(["C1", "C2"])
    assert [f.customer_id for f in features] == ["C1", "C2"]
    assert [p.customer_id for p in pipeline.predict_many(features)] == ["C1", "C2"]


def test_candidates_shared_by_many_customers_are_checked_once_and_still_checked(loyaltylens_pipeline):
    """A batch retriever may hand customers who ask the same question the same objects:
    each is validated once per call, and a bad one is still caught."""
    from loyaltylens_core.kernel.adapters import retrieval_query
    from loyaltylens_core.kernel.contracts import OfferCandidate
    from loyaltylens_core.sdk.testing import FAKE_OFFERS

    good = [OfferCandidate(offer=FAKE_OFFERS[0], similarity=0.9, rank=1)]
    bad = [OfferCandidate.model_construct(offer=FAKE_OFFERS[0], similarity=0.5, rank=0)]

    class SharingRetriever:
        answer = good

        def retrieve(self, query):
            return self.answer

        def retrieve_many(self, queries):
            return [self.answer for _ in queries]

    retriever = SharingRetriever()
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=retriever))
    features = [make_features(f"C{i}") for i in range(3)]
    queries = [retrieval_query(f, FakePropensity().predict(f), 3) for f in features]
    lists = pipeline.retrieve_many(queries)
    assert [c.offer.offer_id for cands in lists for c in cands] == [FAKE_OFFERS[0].offer_id] * 3
    assert lists[0][0] is lists[2][0]  # one checked copy, shared (contracts are frozen)
    retriever.answer = bad
    with pytest.raises(ContractViolation, match="'rank'"):
        pipeline.retrieve_many(queries)


def test_a_plugin_can_fall_back_to_another_named_plugin(loyaltylens_pipeline):
    class Flaky:
        prompt_version = "flaky-1"

        def __init__(self, fallback):
            self.fallback = fallback

        def generate(self, variables):
            copy = self.fallback.generate(variables)
            return copy.model_copy(update={"fallback": "llm_unavailable"})

    class FlakyPlugin:
        @hookimpl
        def register_generators(self, register):
            register("flaky", lambda settings, context: Flaky(context.fallback("generator", "fake")))

    result = loyaltylens_pipeline(extra_plugins=[FlakyPlugin()], use=["generator=flaky"]).run("C001")
    assert result.copy_.prompt_version == "fake-template-1"
    assert result.fallbacks == ("generator:llm_unavailable",)


def test_fallback_to_a_plugin_that_is_not_installed(loyaltylens_pipeline):
    from loyaltylens_core.kernel.errors import ConfigError

    class NeedsMissing:
        @hookimpl
        def register_generators(self, register):
            register("needy", lambda settings, context: context.fallback("generator", "template"))

    with pytest.raises(ConfigError, match="no generator plugin named 'template'"):
        loyaltylens_pipeline(extra_plugins=[NeedsMissing()], use=["generator=needy"]).run("C001")


def test_component_serving_from_its_own_fallback_is_recorded(loyaltylens_pipeline):
    retriever = FakeRetriever()
    retriever.fallback_reason = "remote_unreachable"
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=retriever))
    assert pipeline.run("C001").fallbacks == ("retriever:remote_unreachable",)
    rows = pipeline.run_chunk(["C001", "C002"])
    assert all(row["fallbacks"] == ["retriever:remote_unreachable"] for row in rows)


def test_a_chunk_pauses_cyclic_gc_and_leaves_it_as_it_found_it(loyaltylens_pipeline):
    """Collections during a chunk walk its live rows for nothing; the caller's GC setting
    is restored afterwards, also when a stage fails."""
    import gc

    seen: list[bool] = []

    class Watching(FakeGenerator):
        def generate(self, variables):
            seen.append(gc.isenabled())
            if variables["customer_id"] == "C002":
                raise RuntimeError("copy service down")
            return super().generate(variables)

    pipeline = loyaltylens_pipeline(fake=FakePlugin(generator=Watching()))
    assert len(pipeline.run_chunk(["C001"])) == 1
    assert seen == [False] and gc.isenabled()
    with pytest.raises(Exception, match="copy service down"):
        pipeline.run_chunk(["C002"])
    assert gc.isenabled()
    gc.disable()
    try:
        pipeline.run_chunk(["C001"])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_event_hooks_run_through_pluggy_ordering_and_wrappers(loyaltylens_pipeline, capsys):
    order: list[str] = []

    class Plain:
        @hookimpl
        def loyaltylens_after_run(self, result):
            order.append("plain")

    class First:
        @hookimpl(tryfirst=True)
        def loyaltylens_after_run(self, result):
            order.append("first")

    class Broken:
        @hookimpl
        def loyaltylens_after_run(self, result):
            raise RuntimeError("listener failed")

    class Wrapper:
        @hookimpl(wrapper=True)
        def loyaltylens_after_run(self, result):
            order.append("wrapper-before")
            outcome = yield
            order.append("wrapper-after")
            return outcome

    # Plain registered before First: only pluggy's ordering puts First first.
    loyaltylens_pipeline(extra_plugins=[Plain(), Broken(), First(), Wrapper()]).run("C001")
    assert order == ["wrapper-before", "first", "plain", "wrapper-after"]
    assert "listener failed" in capsys.readouterr().err


def test_a_misspelt_hook_is_a_broken_plugin_with_a_suggestion():
    class Misspelt:
        @hookimpl
        def register_retriever(self, register):  # singular: not a loyaltylens hook
            register("never", lambda s, c: None)

    registry = load_registry([Misspelt()], entry_points=False)
    assert "never" not in registry.names("retriever")
    assert len(registry.broken) == 1
    assert "'register_retriever', which is not a loyaltylens hook (did you mean 'register_retrievers'?)" in registry.broken[0].error


def test_trace_plugins_prints_each_hook_call(loyaltylens_pipeline, monkeypatch, capsys):
    monkeypatch.setenv("LOYALTYLENS_TRACE_PLUGINS", "1")

    class Listener:
        @hookimpl
        def loyaltylens_after_run(self, result):
            pass

    loyaltylens_pipeline(extra_plugins=[Listener()]).run("C001")
    err = capsys.readouterr().err
    assert "loyaltylens: hook loyaltylens_after_run" in err and " ms" in err


@pytest.mark.parametrize("inline", [False, True])
def test_arun_answers_what_run_does_on_the_loop_or_in_a_thread(loyaltylens_pipeline, inline):
    """``arun(inline=True)`` (the service's LLM path when every earlier stage is
    non-blocking) runs the stages before the generator on the loop's own thread, and
    answers exactly what ``run`` and a threaded ``arun`` do."""
    import asyncio
    import threading

    pipeline = loyaltylens_pipeline()
    store = pipeline.component("feature_store")
    threads: list[int] = []
    read = store.read_latest

    def recording_read(customer_id, as_of=None):
        threads.append(threading.get_ident())
        return read(customer_id, as_of)

    store.read_latest = recording_read
    expected = pipeline.run("C001")

    async def on_the_loop() -> tuple[object, int]:
        return await pipeline.arun("C001", inline=inline), threading.get_ident()

    result, loop_thread = asyncio.run(on_the_loop())
    assert (threads[-1] == loop_thread) is inline
    assert result.top_offer == expected.top_offer and result.copy_ == expected.copy_
    assert [c.offer.offer_id for c in result.candidates] == [c.offer.offer_id for c in expected.candidates]


def test_what_a_plugin_raises_is_named_with_its_stage(loyaltylens_pipeline):
    """Components.calling: a plugin's pydantic error is a contract violation naming the
    field, anything else a PluginFault whose cause is the plugin's own exception; our own
    errors and interrupts pass through untouched."""
    from loyaltylens_core.kernel.contracts import OfferCandidate
    from loyaltylens_core.kernel.errors import PluginFault
    from loyaltylens_core.sdk.testing import FAKE_OFFERS

    parts = loyaltylens_pipeline().components
    with pytest.raises(ContractViolation, match="'rank'") as violation:
        with parts.calling("retriever"):
            OfferCandidate(offer=FAKE_OFFERS[0], similarity=0.5, rank=0)
    assert violation.value.__suppress_context__ and violation.value.__cause__ is None
    boom = RuntimeError("index file vanished\nsecond line")
    with pytest.raises(PluginFault, match=r"retriever plugin 'fake'.*failed: RuntimeError: index file vanished\. rerun") as fault:
        with parts.calling("retriever"):
            raise boom
    assert fault.value.__cause__ is boom
    for passed in (CustomerNotFound("C9", "check the id"), KeyboardInterrupt()):
        with pytest.raises(type(passed)) as raised:
            with parts.calling("retriever"):
                raise passed
        assert raised.value is passed
    with parts.calling("retriever"):
        pass
