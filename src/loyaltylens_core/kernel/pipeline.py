"""Run the stages for one customer or many.

The pipeline joins the stages: it times each one, applies the propensity-threshold
fallback the same way whatever retriever is selected, and batches many customers
through the stage methods that have batched forms. Building and checking each stage's
component is components.py; batch rows are rows.py; events are events.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from loyaltylens_core.kernel import adapters, batched, deciding, events
from loyaltylens_core.kernel.batched import FALLBACK_NO_OFFER
from loyaltylens_core.kernel.components import Components, ensure_writable
from loyaltylens_core.kernel.config import Config, load_config
from loyaltylens_core.kernel.contracts import (
    Closeable,
    CustomerFeatures,
    Decision,
    DecisionRequest,
    GeneratedCopy,
    OfferCandidate,
    PipelineResult,
    Placement,
    PluginRef,
    PropensityScore,
    RetrievalQuery,
    validate_customer_id,
)
from loyaltylens_core.kernel.errors import LoyaltyLensError, UsageError
from loyaltylens_core.kernel.experiments import Variant, variant_config
from loyaltylens_core.kernel.feedback import from_batch
from loyaltylens_core.kernel.registry import Implementation, Registry, guard_event_listeners, load_registry
from loyaltylens_core.kernel.rows import BATCH_COLUMNS, Many, batch_row
from loyaltylens_core.kernel.stages import RUN_STAGES
from loyaltylens_core.util.progress import QUIET, Progress

if TYPE_CHECKING:
    import anyio
    import pyarrow as pa

__all__ = [  # names other modules and users import from here
    "BATCH_COLUMNS", "FALLBACK_NO_OFFER", "FALLBACK_THRESHOLD", "RUN_STAGES", "Pipeline", "batch_row",
    "ensure_writable", "validate_customer_id",
]

FALLBACK_THRESHOLD = "threshold_filtered_all"

@dataclasses.dataclass
class _Draft:
    """One run before its copy is written: what ``run`` and ``arun`` share."""

    run_id: str
    customer_id: str
    started: float
    features: Any = None
    propensity: Any = None
    candidates: list[OfferCandidate] = dataclasses.field(default_factory=list)
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    latency: dict[str, float] = dataclasses.field(default_factory=dict)
    experiments: dict[str, str] = dataclasses.field(default_factory=dict)
    decision: Decision | None = None


class Pipeline:
    """The logic that joins the stages, over the configured stages' ``Components``."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self._hooks = components.registry.plugin_manager.hook
        # One pipeline per combination of experiment variants that changes a stage, built
        # on first use; each shares this pipeline's components for the stages it keeps.
        self._variant_pipelines: dict[tuple[tuple[str, str], ...], Pipeline] = {}
        self.listeners: tuple[Closeable, ...] = ()

    @classmethod
    def from_config(
        cls,
        config_path: str | None = None,
        *,
        use: list[str] | None = None,
        extra_plugins: Sequence[object] = (),
        entry_points: bool = True,
        progress: Progress = QUIET,
        needed: tuple[str, ...] = RUN_STAGES,
        read_only: bool = False,
    ) -> "Pipeline":
        """Config from file, environment and ``use``; plugins from entry points and
        ``extra_plugins``; every stage in ``needed`` and every experiment pin resolved now,
        so a typo fails here rather than on the first customer."""
        config = load_config(config_path, use=use)
        registry = load_registry(extra_plugins, entry_points=entry_points)
        return cls.open(config, registry, progress=progress, needed=needed, read_only=read_only)

    @classmethod
    def open(
        cls, config: Config, registry: Registry, *, progress: Progress = QUIET,
        needed: tuple[str, ...] = RUN_STAGES, read_only: bool = False,
    ) -> "Pipeline":
        """``from_config`` for a config and registry already loaded."""
        config.validate_against(registry, needed)
        for experiment in config.experiments.values():
            for variant in experiment.variants:
                variant_config(config, registry, (variant,)).validate_against(registry, variant.stages())
        if not read_only:
            ensure_writable(config.core.data_dir)
        return cls(Components(config, registry, progress, read_only=read_only))

    def attach(self, listener: Closeable) -> None:
        """An event listener (a pluggy plugin of event hooks) that lives as long as this
        pipeline: the app layer's impression recorder. Closed before the components, so
        it can still write through them."""
        self.registry.plugin_manager.register(listener)
        guard_event_listeners(self.registry.plugin_manager)
        self.listeners = (*self.listeners, listener)

    def close(self) -> None:
        """Close the listeners (buffered impressions are written), then every component."""
        for listener in self.listeners:
            listener.close()
        for child in self._variant_pipelines.values():
            child.close()
        self.components.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the components, as users and apps reach them -------------------------------

    @property
    def config(self) -> Config:
        return self.components.config

    @property
    def registry(self) -> Registry:
        return self.components.registry

    @property
    def progress(self) -> Progress:
        return self.components.progress

    @property
    def read_only(self) -> bool:
        return self.components.read_only

    def component(self, stage: str, *, prepare: bool = True) -> Any:
        return self.components.component(stage, prepare=prepare)

    def capabilities(self, stage: str) -> frozenset[str]:
        return self.components.capabilities(stage)

    def implementation(self, stage: str) -> Implementation:
        return self.components.implementation(stage)

    def plugin_ref(self, stage: str) -> PluginRef:
        return self.components.plugin_ref(stage)

    def prepare(self, stages: Sequence[str] = RUN_STAGES) -> None:
        self.components.prepare(stages)

    # --- experiments ----------------------------------------------------------------

    def _assign(self, customer_id: str) -> dict[str, Variant]:
        return {name: e.assign(customer_id) for name, e in self.config.experiments.items()}

    def _for_variants(self, assigned: dict[str, Variant]) -> "Pipeline":
        """The pipeline a customer in these variants runs through (this one when no
        variant changes a stage)."""
        changing = tuple((name, v) for name, v in assigned.items() if v.stages())
        if not changing:
            return self
        key = tuple((name, v.name) for name, v in changing)
        child = self._variant_pipelines.get(key)
        if child is None:
            config = variant_config(self.config, self.registry, tuple(v for _, v in changing))
            own = frozenset().union(*(v.stages() for _, v in changing))
            child = Pipeline(Components(config, self.registry, self.progress, read_only=self.read_only,
                                        parent=self.components, own=own))
            self._variant_pipelines[key] = child
        return child

    def _route(self, customer_id: str) -> tuple["Pipeline", dict[str, str]]:
        if not self.config.experiments:
            return self, {}
        assigned = self._assign(customer_id)
        return self._for_variants(assigned), {name: v.name for name, v in assigned.items()}

    def _groups(self, features: Sequence[CustomerFeatures]) -> list[tuple["Pipeline", dict[str, str], list[int]]]:
        """Customers grouped by the pipeline their variants run through, positions kept."""
        if not self.config.experiments:
            return [(self, {}, list(range(len(features))))]
        groups: dict[tuple[tuple[str, str], ...], tuple[Pipeline, dict[str, str], list[int]]] = {}
        for i, f in enumerate(features):
            target, labels = self._route(f.customer_id)
            key = tuple(sorted(labels.items()))
            groups.setdefault(key, (target, labels, []))[2].append(i)
        return list(groups.values())


    # --- one customer ---------------------------------------------------------------

    def run(self, customer_id: str, *, as_of: dt.date | None = None, placement: str | None = None,
            tags: dict[str, str] | None = None) -> PipelineResult:
        """One customer's offers for ``placement`` (``None``: the configured default).
        ``tags`` join the result's ``experiments`` labels (a campaign's arm and run)."""
        validate_customer_id(customer_id)
        slot = self.config.placement(placement)
        target, labels = self._route(customer_id)
        return target._run(customer_id, as_of, {**labels, **(tags or {})}, slot)

    def _run(self, customer_id: str, as_of: dt.date | None, labels: dict[str, str], slot: Placement) -> PipelineResult:
        draft = self._score_and_retrieve(customer_id, as_of, slot)
        draft.experiments = labels
        t = time.perf_counter()
        copy = batched.generate_one(self.components, draft.features, draft.propensity, draft.candidates, draft.fallbacks)
        self._after_stage(draft.run_id, customer_id, "generator", draft.latency, t)
        return self._finish(draft, copy)

    async def arun(
        self, customer_id: str, *, as_of: dt.date | None = None, threads: "anyio.CapacityLimiter | None" = None,
        placement: str | None = None, tags: dict[str, str] | None = None, inline: bool = False,
    ) -> PipelineResult:
        """``run`` for an event loop (the service): the stages before the generator run in a
        worker thread, and a generator with ``agenerate`` (an LLM) is awaited rather than
        given a thread of its own, so many LLM-bound requests wait concurrently.

        ``threads`` bounds the worker threads. ``inline``: the stages before the generator
        are all non-blocking and sub-millisecond, or a decider to await (``AsyncDecider``),
        so they run on the loop itself. Under many
        concurrent LLM calls, a thread hop each made requests queue for the pool and for
        the GIL behind the loop (decision took 11-41 ms, a request 300-360 ms at 64 in flight)."""
        validate_customer_id(customer_id)
        slot = self.config.placement(placement)
        target, labels = self._route(customer_id)
        return await target._arun(customer_id, as_of, {**labels, **(tags or {})}, threads, slot, inline)

    async def _arun(
        self, customer_id: str, as_of: dt.date | None, labels: dict[str, str], threads: "anyio.CapacityLimiter | None",
        slot: Placement, inline: bool = False,
    ) -> PipelineResult:
        import anyio.to_thread

        if inline and "AsyncDecider" in self.components.capabilities("decision"):
            draft, asked, wider, t = self._before_decision(customer_id, as_of, slot)
            (draft.decision,) = await deciding.adecide(self.components, [asked], wider, [draft.fallbacks])
            self._decided(draft, t)
        elif inline:
            draft = self._score_and_retrieve(customer_id, as_of, slot)
        else:
            draft = await anyio.to_thread.run_sync(self._score_and_retrieve, customer_id, as_of, slot, limiter=threads)
        draft.experiments = labels
        parts = self.components
        t = time.perf_counter()
        if not draft.candidates or not parts.has("generator", "AsyncGenerator"):
            copy = batched.generate_one(parts, draft.features, draft.propensity, draft.candidates, draft.fallbacks)
        else:
            variables = adapters.template_variables(draft.features, draft.propensity, draft.candidates[0].offer)
            with parts.calling("generator"):
                produced = await parts.component("generator").agenerate(variables)
                copy = batched.checked_copy(parts, produced, draft.fallbacks)
        self._after_stage(draft.run_id, customer_id, "generator", draft.latency, t)
        return self._finish(draft, copy)

    def _score_and_retrieve(self, customer_id: str, as_of: dt.date | None, slot: Placement) -> "_Draft":
        draft, asked, wider, t = self._before_decision(customer_id, as_of, slot)
        (draft.decision,) = deciding.decide(self.components, [asked], wider, [draft.fallbacks])
        self._decided(draft, t)
        return draft

    def _before_decision(
        self, customer_id: str, as_of: dt.date | None, slot: Placement,
    ) -> tuple["_Draft", DecisionRequest, Callable[[list[int], int], list[list[OfferCandidate]]], float]:
        """Features, score and the retrieved pool: the decision's request, its wider second
        look, and when the decision stage started."""
        parts = self.components
        draft = _Draft(run_id=uuid.uuid4().hex, customer_id=customer_id, started=time.perf_counter())
        t = time.perf_counter()
        with parts.calling("feature_store"):
            draft.features = parts.expect(
                "feature_store", parts.component("feature_store").read_latest(customer_id, as_of), CustomerFeatures
            )
        self._note_component_fallbacks(("feature_store",), draft.fallbacks)
        self._after_stage(draft.run_id, customer_id, "feature_store", draft.latency, t)

        t = time.perf_counter()
        with parts.calling("propensity"):
            draft.propensity = parts.expect(
                "propensity", parts.component("propensity").predict(draft.features), PropensityScore
            )
        self._after_stage(draft.run_id, customer_id, "propensity", draft.latency, t)

        t = time.perf_counter()
        with parts.calling("retriever"):
            pool, query = self._retrieve_one(draft.features, draft.propensity, draft.fallbacks, slot)
        self._after_stage(draft.run_id, customer_id, "retriever", draft.latency, t)

        t = time.perf_counter()
        asked = deciding.request(draft.features, draft.propensity, pool, slot, dt.datetime.now(dt.timezone.utc),
                                 enforce_threshold=query.max_threshold is not None)
        retriever = parts.component("retriever")

        def wider(_: list[int], k: int) -> list[list[OfferCandidate]]:
            with parts.calling("retriever"):
                found = retriever.retrieve(query.model_copy(update={"k": k}))
                return [parts.expect_list("retriever", found, OfferCandidate)]

        return draft, asked, wider, t

    def _decided(self, draft: "_Draft", started: float) -> None:
        assert draft.decision is not None
        draft.candidates = list(draft.decision.chosen)
        self._after_stage(draft.run_id, draft.customer_id, "decision", draft.latency, started)

    def _finish(self, draft: "_Draft", copy: GeneratedCopy | None) -> PipelineResult:
        draft.latency["total"] = (time.perf_counter() - draft.started) * 1000
        result = self._result(
            draft.run_id, dt.datetime.now(dt.timezone.utc), draft.features, draft.propensity, draft.candidates,
            draft.fallbacks, copy, draft.latency, draft.experiments, draft.decision,
        )
        self._after_run(result)
        return result

    def _result(
        self, run_id: str, created_at: dt.datetime, features: CustomerFeatures, propensity: PropensityScore,
        candidates: Sequence[OfferCandidate], fallbacks: Sequence[str], copy: GeneratedCopy | None,
        latency: dict[str, float], experiments: dict[str, str], decision: Decision | None = None,
    ) -> PipelineResult:
        """The one place a ``PipelineResult`` is assembled (``run``, ``arun``, ``run_many``)."""
        return PipelineResult(
            run_id=run_id,
            created_at=created_at,
            customer_id=features.customer_id,
            features=features,
            propensity=propensity,
            candidates=tuple(candidates),
            top_offer=candidates[0].offer if candidates else None,
            copy=copy,
            fallbacks=tuple(fallbacks),
            plugins=self.components.run_plugin_refs(),
            latency_ms=latency,
            experiments=experiments,
            decision=decision,
        )

    def _retrieve_one(
        self, features: CustomerFeatures, propensity: PropensityScore, fallbacks: list[str], slot: Placement
    ) -> tuple[list[OfferCandidate], RetrievalQuery]:
        """The pool the decision chooses from, and the query that found it (without a
        threshold on the threshold fallback)."""
        parts = self.components
        retriever = parts.component("retriever")
        query = adapters.retrieval_query(features, propensity, slot.pool_size)
        candidates = parts.expect_list("retriever", retriever.retrieve(query), OfferCandidate)
        self._note_component_fallbacks(("retriever",), fallbacks)
        if not candidates:
            # Every offer needs more propensity than this customer has: keep the
            # reference behaviour (offer the best match anyway) and say so.
            fallbacks.append(FALLBACK_THRESHOLD)
            unfiltered = query.model_copy(update={"max_threshold": None})
            candidates = parts.expect_list("retriever", retriever.retrieve(unfiltered), OfferCandidate)
            return candidates, unfiltered
        return candidates, query

    def _note_component_fallbacks(self, stages: Sequence[str], fallbacks: list[str]) -> None:
        """A component serving from its own fallback must say so in the result."""
        for stage in stages:
            reason = self.components.fallback_reason(stage)
            if reason:
                fallbacks.append(f"{stage}:{reason}")

    # --- many customers (batched stage methods where a plugin has them) -------------

    def read_many(self, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
        return batched.read_many(self.components, customer_ids, as_of)

    def predict_many(self, features: Sequence[CustomerFeatures]) -> list[PropensityScore]:
        return batched.predict_many(self.components, features)

    def retrieve_many(self, queries: Sequence[RetrievalQuery]) -> list[list[OfferCandidate]]:
        return batched.retrieve_many(self.components, queries)

    def read_known(
        self, customer_ids: Sequence[str], as_of: dt.date | None = None
    ) -> tuple[list[CustomerFeatures], dict[str, LoyaltyLensError]]:
        return batched.read_known(self.components, customer_ids, as_of)

    def _many(self, features: list[CustomerFeatures], slot: Placement) -> Many:
        """Every stage after the feature store for many customers, batched, timed per stage."""
        parts = self.components
        k = slot.pool_size
        timing: dict[str, float] = {}
        t = time.perf_counter()
        with parts.calling("propensity"):
            scores = batched.predict_many(parts, features)
        timing["propensity"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        queries = [adapters.retrieval_query(f, p, k) for f, p in zip(features, scores)]
        with parts.calling("retriever"):
            candidates = batched.retrieve_many(parts, queries)
        component_notes: list[str] = []
        self._note_component_fallbacks(("feature_store", "retriever"), component_notes)
        fallbacks: list[list[str]] = [list(component_notes) for _ in features]
        empty = [i for i, c in enumerate(candidates) if not c]
        relaxed = set(empty)
        for i in empty:
            queries[i] = queries[i].model_copy(update={"max_threshold": None})
        if empty:
            with parts.calling("retriever"):
                retried = batched.retrieve_many(
                    parts, [queries[i] for i in empty]
                )
            for i, found in zip(empty, retried):
                candidates[i] = found
                fallbacks[i].append(FALLBACK_THRESHOLD)
        timing["retriever"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        now = dt.datetime.now(dt.timezone.utc)
        asked = [deciding.request(f, p, c, slot, now, enforce_threshold=i not in relaxed)
                 for i, (f, p, c) in enumerate(zip(features, scores, candidates))]

        def wider(positions: list[int], size: int) -> list[list[OfferCandidate]]:
            with parts.calling("retriever"):
                return batched.retrieve_many(parts, [queries[i].model_copy(update={"k": size}) for i in positions])

        decisions = deciding.decide(parts, asked, wider, fallbacks)
        for i, decision in enumerate(decisions):
            candidates[i] = list(decision.chosen)
        timing["decision"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        with parts.calling("generator"):
            copies = batched.generate_many(parts, features, scores, candidates, fallbacks)
        timing["generator"] = (time.perf_counter() - t) * 1000
        return Many(features, scores, candidates, fallbacks, copies, timing, decisions)

    def run_chunk(
        self, customer_ids: Sequence[str], *, rejects: dict[str, LoyaltyLensError] | None = None,
        placement: str | Placement | None = None, as_of: dt.date | None = None,
    ) -> list[dict[str, Any]]:
        """The pipeline for many customers through the batched stage methods.

        Returns one flat row per customer (what ``loyaltylens batch`` writes), in input
        order, with the same threshold fallback as ``run``. With ``rejects``, customers the
        feature store does not know are left out and recorded there (id -> error) instead
        of failing the chunk.
        """
        for customer_id in customer_ids:
            validate_customer_id(customer_id)
        with cyclic_gc_paused(), self.components.calling("feature_store"):
            if rejects is None:
                features = batched.read_many(self.components, customer_ids, as_of)
            else:
                features, unknown = batched.read_known(self.components, customer_ids, as_of)
                rejects.update(unknown)
        return self.rows_for(features, placement=placement)

    def rows_for(
        self, features: Sequence[CustomerFeatures], *, placement: str | Placement | None = None,
    ) -> list[dict[str, Any]]:
        """Batch rows for customers whose features are already read: what a batch engine's
        worker runs on features the driver resolved (no feature store on the worker).
        Customers in experiment variants run through their variant's stages."""
        slot = self.config.placement(placement)
        with cyclic_gc_paused():
            groups = self._groups(features)
            if len(groups) == 1 and groups[0][0] is self:
                return self._rows_plain(list(features), groups[0][1], slot)
            rows: list[dict[str, Any]] = [{} for _ in features]
            for target, labels, positions in groups:
                for i, row in zip(positions, target._rows_plain([features[i] for i in positions], labels, slot)):
                    rows[i] = row
            return rows

    def _rows_plain(self, features: list[CustomerFeatures], labels: dict[str, str], slot: Placement) -> list[dict[str, Any]]:
        many = self._many(features, slot)
        prompt_version = self.component("generator").prompt_version
        return [batch_row(f, p, c, n, copy, prompt_version, labels, d)
                for (f, p, c, n, copy), d in zip(many.rows(), many.decisions)]

    def run_many(
        self, customer_ids: Sequence[str], *, as_of: dt.date | None = None, placement: str | None = None,
    ) -> list[PipelineResult | LoyaltyLensError]:
        """One ``PipelineResult`` per id, in order, through the batched stage methods; a
        malformed or unknown id gets its error in its place instead of failing the rest."""
        slot = self.config.placement(placement)
        out: list[PipelineResult | LoyaltyLensError | None] = [None] * len(customer_ids)
        valid: list[int] = []
        for i, customer_id in enumerate(customer_ids):
            try:
                validate_customer_id(customer_id)
                valid.append(i)
            except UsageError as exc:
                out[i] = exc
        started = time.perf_counter()
        with self.components.calling("feature_store"):
            features, unknown = batched.read_known(self.components, [customer_ids[i] for i in valid], as_of)
        read_ms = (time.perf_counter() - started) * 1000
        served = [i for i in valid if customer_ids[i] not in unknown]  # aligned with features
        for i in valid:
            if customer_ids[i] in unknown:
                out[i] = unknown[customer_ids[i]]
        groups = [(target, labels, positions, target._many([features[j] for j in positions], slot))
                  for target, labels, positions in self._groups(features)]
        latency: dict[str, float] = {"feature_store": read_ms}
        for *_, many in groups:
            for stage, ms in many.timing.items():
                latency[stage] = latency.get(stage, 0.0) + ms
        latency["total"] = (time.perf_counter() - started) * 1000
        latency = {stage: ms / max(1, len(served)) for stage, ms in latency.items()}  # per customer
        created = dt.datetime.now(dt.timezone.utc)
        for target, labels, positions, many in groups:
            for j, (f, p, cands, notes, copy), decision in zip(positions, many.rows(), many.decisions):
                result = target._result(uuid.uuid4().hex, created, f, p, cands, notes, copy, dict(latency), labels,
                                        decision)
                self._after_run(result)
                out[served[j]] = result
        return [r for r in out if r is not None]

    # --- events ---------------------------------------------------------------------

    def _after_stage(
        self, run_id: str, customer_id: str, stage: str, latency: dict[str, float], started: float
    ) -> None:
        events.after_stage(self._hooks, run_id, customer_id, stage, self.config.stages[stage], latency, started)

    def _after_run(self, result: PipelineResult) -> None:
        events.after_run(self._hooks, result)

    def after_batch(self, rows: "pa.Table", source: str = "batch") -> None:
        """A finished batch's merged rows (``rows.schema()``): its impressions, to listeners."""
        if self._hooks.loyaltylens_after_batch.get_hookimpls():
            self._hooks.loyaltylens_after_batch(
                impressions=from_batch(rows, dt.datetime.now(dt.timezone.utc), source))


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a chunk is computed. A chunk allocates tens of
    thousands of contracts and rows that all stay alive until it is written, and none
    forms a cycle: each collection the allocations trigger walks them all for nothing
    (15-25% of a chunk at 10,000 customers). Reference counting still frees everything;
    collection resumes after the chunk."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
