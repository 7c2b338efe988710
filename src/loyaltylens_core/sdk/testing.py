"""Fake stage plugins and small builders for testing the core and your own plugins.

``FakePlugin`` registers a ``fake`` implementation of every stage (the fakes come from
the stage table: ``Stage.fake`` names each one); pass your own component for any stage:

    from loyaltylens_core.sdk.testing import FakePlugin, FakeFeatureStore, make_features

    plugin = FakePlugin(feature_store=FakeFeatureStore({"C001": make_features("C001")}))

The ``loyaltylens_pipeline`` fixture that builds a pipeline from them lives in
``loyaltylens_core.pytest_plugin`` (installed as a pytest plugin); local stand-in servers
(moto, redis, free ports) are ``loyaltylens_core.sdk.standins``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from loyaltylens_core.kernel.adapters import check_template, render
from loyaltylens_core.kernel.contracts import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    BatchJob,
    CustomerFeatures,
    Decision,
    DecisionRequest,
    GeneratedCopy,
    Offer,
    OfferCandidate,
    PropensityScore,
    RetrievalQuery,
)
from loyaltylens_core.kernel.errors import CustomerNotFound
from loyaltylens_core.kernel.hookspecs import hookimpl
from loyaltylens_core.kernel.registry import Register
from loyaltylens_core.kernel.stages import REGISTRATION_HOOKS, STAGES

AS_OF = dt.date(2026, 6, 29)


def make_features(customer_id: str = "C001", **overrides: Any) -> CustomerFeatures:
    values: dict[str, Any] = dict(
        customer_id=customer_id,
        recency_days=3.0,
        frequency_30d=4,
        monetary_90d=320.5,
        offer_redemption_rate=0.4,
        channel_preference="mobile",
        engagement_score=0.7,
        tier="gold",
        as_of=AS_OF,
        feature_version="fake-v1",
    )
    values.update(overrides)
    return CustomerFeatures(**values)


FAKE_OFFERS: tuple[Offer, ...] = (
    Offer(offer_id="F1", title="Free coffee", description="A free coffee on your next visit.",
          category="free_item", min_propensity_threshold=0.1),
    Offer(offer_id="F2", title="3x points on groceries", description="Triple points on groceries.",
          category="points_multiplier", min_propensity_threshold=0.5),
    Offer(offer_id="F3", title="Fast track to platinum", description="Upgrade your tier.",
          category="tier_upgrade", min_propensity_threshold=0.9),
)


class FakeFeatureStore:
    def __init__(self, customers: dict[str, CustomerFeatures] | None = None) -> None:
        self.customers = customers or {c: make_features(c) for c in ("C001", "C002", "C003")}

    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures:
        try:
            return self.customers[customer_id]
        except KeyError:
            raise CustomerNotFound(f"customer {customer_id!r} not found", "try C001") from None

    def read_many(self, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
        return [self.read_latest(c, as_of) for c in customer_ids]

    def customer_ids(self) -> list[str]:
        return sorted(self.customers)


class FakePropensity:
    """Scores from a fixed number or a function of the features."""

    version = "fake-propensity-1"

    def __init__(self, score: float | Callable[[CustomerFeatures], float] = 0.6) -> None:
        self.score = score

    def predict(self, features: CustomerFeatures) -> PropensityScore:
        score = self.score(features) if callable(self.score) else self.score
        return PropensityScore(
            customer_id=features.customer_id, score=score, label=1 if score >= 0.5 else 0, model_version=self.version
        )

    def predict_many(self, features: Sequence[CustomerFeatures]) -> list[PropensityScore]:
        return [self.predict(f) for f in features]


class FakeEmbedder:
    """Deterministic bag-of-words hashing: similar words, similar vectors."""

    dimension = 64

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


class FakeRetriever:
    """Ranks a small catalogue by the order given, honouring the threshold filter."""

    def __init__(self, offers: Sequence[Offer] = FAKE_OFFERS) -> None:
        self.offers = list(offers)
        self.queries: list[RetrievalQuery] = []

    def retrieve(self, query: RetrievalQuery) -> list[OfferCandidate]:
        self.queries.append(query)
        kept = [
            o for o in self.offers
            if (query.max_threshold is None or o.min_propensity_threshold <= query.max_threshold)
            and (query.tier is None or query.tier in o.tiers)
        ]
        return [
            OfferCandidate(offer=o, similarity=1.0 - 0.1 * i, rank=i + 1)
            for i, o in enumerate(kept[: query.k])
        ]


class FakeGenerator:
    prompt_version = "fake-template-1"
    HEADLINE = "{tier_title} member: {offer_title}"

    def __init__(self) -> None:
        check_template(self.HEADLINE, "fake headline")

    def generate(self, variables: dict[str, Any]) -> GeneratedCopy:
        return GeneratedCopy(
            headline=render(self.HEADLINE, variables),
            body=variables["offer_description"],
            cta=f"Shop {variables['channel_phrase']}",
            prompt_version=self.prompt_version,
        )


class FakeDeployTarget:
    def __init__(self) -> None:
        self.state = "absent"

    def up(self, archive: Any) -> dict[str, Any]:
        self.state = "InService"
        return {"status": self.state}

    def invoke(self, features: CustomerFeatures) -> dict[str, Any]:
        return {"propensity_score": 0.5, "model_version": "fake"}

    def status(self) -> dict[str, Any]:
        return {"status": self.state}

    def down(self) -> dict[str, Any]:
        self.state = "absent"
        return {"status": self.state}


class FakeBatchEngine:
    """Computes every chunk in this process, recording the chunks it was given."""

    workers = 1

    def __init__(self) -> None:
        self.chunks: list[tuple[int, list[str]]] = []

    def run(self, job: BatchJob) -> None:
        self.chunks.extend(job.chunks)
        job.run_here()


class FakeFeedbackStore:
    """Impressions and outcomes in memory, with the reference join and the same duplicate
    and unknown-impression rules as a real store."""

    def __init__(self) -> None:
        from loyaltylens_core.kernel.feedback import impression_schema, outcome_schema

        self.impressions = impression_schema().empty_table()
        self.outcomes = outcome_schema().empty_table()

    def record_impressions(self, impressions: Any) -> None:
        import pyarrow as pa

        self.impressions = pa.concat_tables([self.impressions, impressions])

    def record_outcomes(self, outcomes: Any, check: bool = True) -> dict[str, Any]:
        import pyarrow as pa

        if not check:
            self.outcomes = pa.concat_tables([self.outcomes, outcomes])
            return {"added": outcomes.num_rows, "duplicates": 0, "unknown": []}
        from loyaltylens_core.kernel.feedback import screen_outcomes

        known = set(self.impressions["impression_id"].to_pylist())
        held = set(zip(self.outcomes["impression_id"].to_pylist(), self.outcomes["event"].to_pylist()))
        keep, duplicates, unknown = screen_outcomes(outcomes, known, held)
        self.outcomes = pa.concat_tables([self.outcomes, outcomes.take(pa.array(keep, pa.int64()))])
        return {"added": len(keep), "duplicates": duplicates, "unknown": unknown}

    def impressions_with_outcomes(self, since: dt.datetime | None = None) -> Any:
        import pyarrow.compute as pc

        from loyaltylens_core.kernel.feedback import join_outcomes

        joined = join_outcomes(self.impressions, self.outcomes)
        return joined if since is None else joined.filter(pc.greater_equal(joined["shown_at"], since))


class FakeTracker:
    """Keeps every logged training run."""

    def __init__(self) -> None:
        self.runs: list[tuple[dict[str, Any], Any]] = []

    def log_training(self, card: dict[str, Any], model_dir: Any) -> dict[str, Any]:
        self.runs.append((card, model_dir))
        return {"run_id": f"fake-{len(self.runs)}"}


class FakeDecider:
    """The first ``k`` candidates that pass the threshold, in retrieval order: no rules, no
    caps. Keeps a campaign's frequency rule in memory (and counts nothing for a preview).
    Records every request it was asked."""

    nonblocking = True
    caps_frequency = True
    previews = True

    def __init__(self) -> None:
        self.requests: list[DecisionRequest] = []
        self.frequency: dict[tuple[str, str], dict[str, dt.datetime]] = {}  # (group, customer) -> {run: when}

    def decide(self, request: DecisionRequest) -> Decision:
        self.requests.append(request)
        rule = request.placement.frequency
        if rule is not None:
            held = self.frequency.setdefault((rule.group, request.features.customer_id), {})
            window = dt.timedelta(days=rule.days)
            if any(run != rule.run and request.now - at < window for run, at in held.items()):
                return Decision(placement=request.placement.name, chosen=(), considered=len(request.candidates),
                                dropped={"capped_frequency": len(request.candidates)} if request.candidates else {})
            if request.candidates and not request.placement.preview:
                held[rule.run] = request.now
        score = request.propensity.score
        kept = [c for c in request.candidates
                if not request.enforce_threshold or c.offer.min_propensity_threshold <= score]
        chosen = tuple(OfferCandidate(offer=c.offer, similarity=c.similarity, rank=n)
                       for n, c in enumerate(kept[: request.placement.k], 1))
        below = len(request.candidates) - len(kept)
        return Decision(placement=request.placement.name, chosen=chosen, considered=len(request.candidates),
                        dropped={"below_threshold": below} if below else {}, ranking=request.placement.ranking)


FAKE_COMPONENTS: dict[str, Callable[[], Any]] = {
    "feature_store": FakeFeatureStore,
    "propensity": FakePropensity,
    "embedder": FakeEmbedder,
    "retriever": FakeRetriever,
    "decision": FakeDecider,
    "generator": FakeGenerator,
    "deploy_target": FakeDeployTarget,
    "batch_engine": FakeBatchEngine,
    "feedback_store": FakeFeedbackStore,
    "tracking": FakeTracker,
}


class FakePlugin:
    """A pluggy plugin registering ``fake`` for every stage; pass instances to control them.

    Its registration hooks are made from the stage table (one per stage), so a new stage
    needs only its fake component in FAKE_COMPONENTS."""

    def __init__(self, **components: Any) -> None:
        unknown = set(components) - set(STAGES)
        if unknown:
            raise TypeError(f"no such stage: {sorted(unknown)}; stages are: {', '.join(STAGES)}")
        self.components = {s: components[s] if s in components else FAKE_COMPONENTS[s]() for s in STAGES}


def _fake_registration(stage: str) -> Callable[[FakePlugin, Register], None]:
    def register_fake(self: FakePlugin, register: Register) -> None:
        register("fake", lambda settings, context: self.components[stage])

    register_fake.__name__ = REGISTRATION_HOOKS[stage]
    register_fake.__doc__ = f"Register ``fake`` for the {stage} stage."
    return register_fake


for _stage in STAGES:
    setattr(FakePlugin, REGISTRATION_HOOKS[_stage], hookimpl(_fake_registration(_stage)))


ALL_FAKE = [f"{stage}=fake" for stage in STAGES]


def make_context(
    data_dir: Path,
    stage: str = "test",
    name: str = "test",
    *,
    components: dict[str, Any] | None = None,
    fallbacks: dict[tuple[str, str], Any] | None = None,
    seed: int = 42,
    demo_customers: int = 300,
) -> Any:
    """A StageContext for building one plugin's component directly in its own tests.

    ``components`` stands in for other stages (e.g. ``{"embedder": FakeEmbedder()}``)
    and ``fallbacks`` for named fallback plugins (``{("generator", "template"): ...}``),
    so a plugin's tests never import another plugin.
    """
    from loyaltylens_core.kernel.context import StageContext
    from loyaltylens_core.util.progress import QUIET

    others = dict(components or {})

    def component(other: str) -> Any:
        if other not in others:
            raise LookupError(f"test context has no {other!r} component; pass it in components=")
        return others[other]

    named = dict(fallbacks or {})

    def fallback(other: str, other_name: str) -> Any:
        if (other, other_name) not in named:
            raise LookupError(f"test context has no fallback {other}/{other_name}; pass it in fallbacks=")
        return named[(other, other_name)]

    return StageContext(
        stage=stage, name=name, data_dir=Path(data_dir), seed=seed, progress=QUIET,
        demo_customers=demo_customers, _component=component, _named=fallback,
    )


TINY_SPEC: dict[str, Any] = {
    "model_version": "tiny_v1",
    "numeric_features": list(NUMERIC_FEATURES),
    "categorical_features": {name: list(values) for name, values in CATEGORICAL_FEATURES.items()},
    "format": "torchscript",
}


def tiny_score(features: CustomerFeatures) -> float:
    """What the tiny archive's model answers: sigmoid(rate - 0.5 + 0.1 * channel index)."""
    import math

    channel = TINY_SPEC["categorical_features"]["channel_preference"].index(features.channel_preference)
    return 1 / (1 + math.exp(-(features.offer_redemption_rate - 0.5 + 0.1 * channel)))


def write_tiny_archive(path: Path, *, state_dict: bool = False, version: str = "tiny_v1") -> Path:
    """A real model.tar.gz in the deploy layout around a tiny TorchScript model, for deploy
    target tests that must not depend on the propensity plugin. ``state_dict=True`` writes a
    plain state dict as model.pt instead: what a container must refuse to load. ``version``
    names the model in its spec (several archives of a multi-model endpoint tell apart)."""
    import io
    import json
    import tarfile
    import warnings

    import torch

    from loyaltylens_core.sdk.archive import inference_script

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor(-0.5))

        def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(numeric[:, 3] + self.bias + 0.1 * categorical[:, 0].float())

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if state_dict:
            torch.save(Tiny().state_dict(), buffer)
        else:
            torch.jit.save(torch.jit.script(Tiny()), buffer)
    files = {
        "model.pt": buffer.getvalue(),
        "spec.json": json.dumps({**TINY_SPEC, "model_version": version}).encode(),
        "code/inference.py": inference_script(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path
