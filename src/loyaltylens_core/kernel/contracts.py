"""The typed contracts that flow between stages, and one Protocol per stage.

Field names here are a public API: plugins written by users depend on them.
Add fields freely; never rename one without bumping ``CONTRACT_VERSION``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Literal, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loyaltylens_core.kernel.expressions import Names, parse

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    from loyaltylens_core.kernel.errors import LoyaltyLensError
    from loyaltylens_core.kernel.pipeline import Pipeline

CONTRACT_VERSION = "1"

# 1-64 letters, digits, ".", "_" or "-", not starting with punctuation (C001, 7f3a-22).
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)
CustomerId = Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN)]
Channel = Literal["in-store", "mobile", "web"]
Tier = Literal["bronze", "silver", "gold", "platinum"]
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
UnitInterval = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

CHANNELS: tuple[str, ...] = ("in-store", "mobile", "web")
TIERS: tuple[str, ...] = ("bronze", "silver", "gold", "platinum")


class Contract(BaseModel):
    """Base for every contract: immutable, and unknown fields are a bug, not noise."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CustomerFeatures(Contract):
    customer_id: CustomerId
    recency_days: NonNegative
    frequency_30d: Annotated[int, Field(ge=0)]
    monetary_90d: NonNegative
    offer_redemption_rate: UnitInterval
    channel_preference: Channel
    engagement_score: UnitInterval
    tier: Tier
    as_of: dt.date
    feature_version: str


# The model inputs, derived from the contract (every number, every closed set), in field
# order: drift, the service's score endpoint, models and rules all read these.
NUMERIC_FEATURES: tuple[str, ...] = tuple(
    name for name, field in CustomerFeatures.model_fields.items() if field.annotation in (int, float)
)
CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {"channel_preference": CHANNELS, "tier": TIERS}


class PropensityScore(Contract):
    customer_id: CustomerId
    score: UnitInterval
    label: Literal[0, 1]
    model_version: str
    # The segment whose own model scored this customer ("tier=gold"); None: one model for all.
    segment: str | None = None


_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# What a rule over the customer alone may name (a campaign's audience): the features.
FEATURE_NAMES = Names(
    types={**{name: "number" for name in NUMERIC_FEATURES}, **{name: "string" for name in CATEGORICAL_FEATURES}},
    values={name: frozenset(values) for name, values in CATEGORICAL_FEATURES.items()},
)
# What an offer's ``eligibility`` rule may name: the features, the propensity score and the
# placement being filled.
ELIGIBILITY_NAMES = Names(types={**FEATURE_NAMES.types, "propensity": "number", "placement": "string"},
                          values=FEATURE_NAMES.values)


def feature_values(features: "CustomerFeatures") -> dict[str, Any]:
    """A customer's features as a rule evaluates them (FEATURE_NAMES: numbers as floats)."""
    values: dict[str, Any] = {name: float(getattr(features, name)) for name in NUMERIC_FEATURES}
    for name in CATEGORICAL_FEATURES:
        values[name] = getattr(features, name)
    return values
# What a placement's ranking formula may name.
RANKING_NAMES = Names(types={"propensity": "number", "similarity": "number", "value": "number", "priority": "number"})
# Why a decision dropped a retrieved offer (PipelineResult.decision.dropped's keys).
DROP_REASONS: tuple[str, ...] = (
    "wrong_placement", "ineligible", "not_yet_valid", "expired", "below_threshold", "capped_customer",
    "capped_total", "out_of_stock", "counter_store_down", "not_in_collection", "capped_frequency",
)


class CapWindow(Contract):
    """At most ``count`` hand-outs to one customer in any ``days``-day window."""

    count: Annotated[int, Field(ge=1)]
    days: Annotated[int, Field(ge=1, le=3660)]


class Offer(Contract):
    offer_id: str
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    category: str
    min_propensity_threshold: UnitInterval
    # Catalogue fields beyond the four the pipeline needs.
    tiers: tuple[Tier, ...] = TIERS  # type: ignore[assignment]
    channels: tuple[Channel, ...] = CHANNELS  # type: ignore[assignment]
    value: NonNegative = 0.0
    valid_days: Annotated[int, Field(gt=0)] = 30
    # Decisioning (docs/decisioning.md): who may get it, when, how often, where, and how much.
    eligibility: str | None = None  # a rule over ELIGIBILITY_NAMES, e.g. 'tier == "gold" and recency_days <= 30'
    valid_from: dt.datetime | None = None  # UTC; a bare date is its first instant
    valid_to: dt.datetime | None = None  # UTC; a bare date is its last instant
    priority: int = 0
    cap_per_customer: CapWindow | None = None
    cap_total: Annotated[int, Field(ge=1)] | None = None  # hand-outs across all customers, ever
    stock: Annotated[int, Field(ge=0)] | None = None  # units LoyaltyLens may hand out, ever
    placements: tuple[str, ...] | None = None  # the placements it may fill; None: any

    @field_validator("eligibility")
    @classmethod
    def _rule_parses(cls, rule: str | None) -> str | None:
        if rule is not None:
            parse(rule, ELIGIBILITY_NAMES, "bool")
        return rule

    @field_validator("valid_from", "valid_to", mode="before")
    @classmethod
    def _utc_instant(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str) and _BARE_DATE.match(value):
            day = dt.date.fromisoformat(value)
            value = dt.datetime.combine(day, dt.time.max if info.field_name == "valid_to" else dt.time.min)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time.max if info.field_name == "valid_to" else dt.time.min)
        return value

    @field_validator("valid_from", "valid_to")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value

    @model_validator(mode="after")
    def _window_is_forward(self) -> "Offer":
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError(f"valid_to {self.valid_to.isoformat()} is before valid_from {self.valid_from.isoformat()}")
        return self

    @property
    def is_capped(self) -> bool:
        """Whether handing it out needs the counter store."""
        return self.cap_per_customer is not None or self.cap_total is not None or self.stock is not None


class OfferCandidate(Contract):
    offer: Offer
    similarity: Finite
    rank: Annotated[int, Field(ge=1)]


class RetrievalQuery(Contract):
    """What the retriever is asked: a natural-language text plus a threshold filter.

    ``max_threshold`` keeps only offers whose ``min_propensity_threshold`` is at or
    below it; ``None`` means no filter (the pipeline's fallback path). ``tier``, when
    set, keeps only offers that tier is eligible for.
    """

    customer_id: CustomerId
    text: str = Field(min_length=1)
    k: Annotated[int, Field(ge=1, le=200)] = 3
    max_threshold: UnitInterval | None = None
    tier: Tier | None = None


class GeneratedCopy(Contract):
    headline: str = Field(min_length=1)
    body: str = Field(min_length=1)
    cta: str = Field(min_length=1)
    prompt_version: str
    # Set when this copy came from a fallback: why (e.g. "llm_invalid_output"). The
    # pipeline records it in PipelineResult.fallbacks as "generator:<reason>".
    fallback: str | None = None


class Frequency(Contract):
    """A campaign's frequency rule: a customer gets at most one decision of ``group`` in any
    ``days``-day window. Decisions of the same ``run`` count once, so a campaign run that is
    resumed after a crash, or a send that is retried, does not cap its own customers."""

    group: str = Field(min_length=1)
    days: Annotated[int, Field(ge=1, le=3660)]
    run: str = ""


class Placement(Contract):
    """A slot offers are decided for (``[placements.NAME]``): how many offers it shows, how
    they are ranked (``similarity``, ``priority`` or a formula over RANKING_NAMES), which
    offer fills it when none is left, and how many retrieved offers the decision sees.

    A campaign narrows its placement (``kernel/campaigns.py``): ``offer_ids`` / ``categories``
    is its offer collection (other offers are dropped as ``not_in_collection`` by the core,
    whatever the decider) and ``frequency`` its frequency rule (kept by the decider, which
    must say ``caps_frequency``). ``preview`` marks a dry run."""

    name: str = Field(min_length=1)
    k: Annotated[int, Field(ge=1, le=50)] = 3
    ranking: str = "similarity"
    fallback_offer: str | None = None
    pool: Annotated[int, Field(ge=1, le=200)] | None = None  # default: max(4k, 10)
    offer_ids: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    frequency: Frequency | None = None
    # A dry run (`campaign run --dry-run`): decide as for real, count nothing. Only a decider
    # that says ``previews`` is asked.
    preview: bool = False

    @field_validator("ranking")
    @classmethod
    def _ranking_parses(cls, ranking: str) -> str:
        if ranking not in ("similarity", "priority"):
            parse(ranking, RANKING_NAMES, "number")
        return ranking

    @property
    def pool_size(self) -> int:
        return self.pool or min(200, max(4 * self.k, 10))

    def holds(self, offer: Offer) -> bool:
        """Whether ``offer`` is in this placement's offer collection (no collection: every offer)."""
        if self.offer_ids is not None and offer.offer_id not in self.offer_ids:
            return False
        return self.categories is None or offer.category in self.categories


class DecisionRequest(Contract):
    """What the decision stage is asked: pick up to ``placement.k`` of ``candidates`` (the
    retrieved pool, best match first) for this customer, at ``now``."""

    features: CustomerFeatures
    propensity: PropensityScore
    candidates: tuple[OfferCandidate, ...]
    placement: Placement
    now: dt.datetime
    # False on the pipeline's threshold fallback (no offer passed the threshold, the
    # best matches are offered anyway): thresholds are then not a reason to drop.
    enforce_threshold: bool = True


class Decision(Contract):
    """The offers chosen for a placement, ranked, and why the others were dropped
    (``dropped``: reason -> count, reasons from DROP_REASONS). ``fallback`` says when the
    decision was made without something it needed (``counter_store_unavailable``) or
    filled the placement with its fallback offer (``fallback_offer``)."""

    placement: str
    chosen: tuple[OfferCandidate, ...]
    dropped: dict[str, int] = Field(default_factory=dict)
    considered: Annotated[int, Field(ge=0)] = 0
    ranking: str = "similarity"
    fallback: str | None = None


class PluginRef(Contract):
    name: str
    distribution: str | None = None
    version: str | None = None


class PipelineResult(Contract):
    run_id: str
    created_at: dt.datetime
    customer_id: CustomerId
    features: CustomerFeatures
    propensity: PropensityScore
    candidates: tuple[OfferCandidate, ...]
    top_offer: Offer | None
    copy_: GeneratedCopy | None = Field(default=None, alias="copy")
    fallbacks: tuple[str, ...] = ()
    plugins: dict[str, PluginRef]
    latency_ms: dict[str, float]
    contract_version: str = CONTRACT_VERSION
    # The variant of each running experiment this customer is in ({experiment: variant}); a
    # campaign's live decision adds its arm, channel and run (``campaign:NAME...`` keys).
    experiments: dict[str, str] = Field(default_factory=dict)
    # The decision behind ``candidates``: placement, ranking, offers dropped by reason.
    decision: Decision | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON shape users see: ``copy`` rather than the Python-safe ``copy_``."""
        return self.model_dump(mode="json", by_alias=True)


class TrainingSet(Contract):
    """Point-in-time features with a label observed strictly after ``as_of``."""

    features: tuple[CustomerFeatures, ...]
    labels: tuple[Literal[0, 1], ...]
    horizon_days: int
    data_hash: str
    # Each example's true probability of its label, when the data is synthetic and its
    # generator knows it (the demo): for oracle metrics only, never for training.
    truth: tuple[UnitInterval, ...] | None = None


# --- One Protocol per stage -------------------------------------------------------
# Components are checked against these when built. Optional capabilities (prepare,
# batched methods, training) are separate protocols so a minimal plugin stays small.


@runtime_checkable
class FeatureStore(Protocol):
    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures: ...


@runtime_checkable
class BatchFeatureStore(Protocol):
    def read_many(
        self, customer_ids: Sequence[str], as_of: dt.date | None = None
    ) -> list[CustomerFeatures]: ...


@runtime_checkable
class PropensityModel(Protocol):
    def predict(self, features: CustomerFeatures) -> PropensityScore: ...


@runtime_checkable
class BatchPropensityModel(Protocol):
    def predict_many(self, features: Sequence[CustomerFeatures]) -> list[PropensityScore]: ...


@runtime_checkable
class Embedder(Protocol):
    """Texts in, one L2-normalised float32 row per text out (a numpy array)."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: RetrievalQuery) -> list[OfferCandidate]: ...


@runtime_checkable
class BatchRetriever(Protocol):
    def retrieve_many(self, queries: Sequence[RetrievalQuery]) -> list[list[OfferCandidate]]: ...


@runtime_checkable
class Decider(Protocol):
    """Chooses which retrieved offers a customer gets for a placement: eligibility,
    validity, caps, ranking (docs/decisioning.md). Anything it hands out is counted
    against the offers' caps before ``decide`` returns."""

    def decide(self, request: DecisionRequest) -> Decision: ...


@runtime_checkable
class BatchDecider(Protocol):
    """``decide`` for many customers at once (one counter-store transaction per chunk)."""

    def decide_many(self, requests: Sequence[DecisionRequest]) -> list[Decision]: ...


@runtime_checkable
class AsyncDecider(Protocol):
    """``decide_many`` that can be awaited: a decider whose counters live in a network store
    (Redis) waits for it without holding a thread, so ``serve`` decides on its event loop
    (every other stage before the generator being ``NonBlocking``)."""

    async def adecide_many(self, requests: Sequence[DecisionRequest]) -> list[Decision]: ...


@runtime_checkable
class CapsFrequency(Protocol):
    """A decider that keeps a placement's ``frequency`` rule (campaign frequency caps):
    a customer already holding a decision of the group in the window gets nothing, with
    every candidate dropped as ``capped_frequency``; a decision that hands something out
    counts for the group. ``caps_frequency`` may be False when caps are switched off."""

    caps_frequency: bool


@runtime_checkable
class PreviewsDecisions(Protocol):
    """A decider that honours ``placement.preview``: it decides as it would (caps as they
    stand now, and as its own answers in the same call use them up) and counts nothing."""

    previews: bool


@runtime_checkable
class LooksUpOffers(Protocol):
    """A retriever that can hand back catalogue offers by id (placement fallback offers)."""

    def offers_by_id(self, offer_ids: Sequence[str]) -> dict[str, Offer]: ...


@runtime_checkable
class Generator(Protocol):
    prompt_version: str

    def generate(self, variables: dict[str, Any]) -> GeneratedCopy: ...


@runtime_checkable
class BatchGenerator(Protocol):
    def generate_many(self, variables: Sequence[dict[str, Any]]) -> list[GeneratedCopy]: ...


@runtime_checkable
class AsyncGenerator(Protocol):
    """A generator that can write copy without holding a thread while it waits (an LLM
    call): the service awaits it, so many requests wait on the LLM concurrently."""

    async def agenerate(self, variables: dict[str, Any]) -> GeneratedCopy: ...


@runtime_checkable
class DeployTarget(Protocol):
    """Ships a model archive (see ``loyaltylens_core.sdk.archive``) to an endpoint.

    ``invoke`` returns at least ``{"propensity_score": float, "model_version": str}``.
    """

    def up(self, archive: Path) -> dict[str, Any]: ...

    def invoke(self, features: CustomerFeatures) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def down(self) -> dict[str, Any]: ...


@runtime_checkable
class SplitsTraffic(Protocol):
    """A deploy target that serves a ``deploy package --variants`` package as one endpoint
    split by weight, and changes the weights of the running endpoint in place
    (`loyaltylens deploy weights`). Returns a summary with the weights now in force."""

    def update_weights(self, weights: dict[str, float]) -> dict[str, Any]: ...


@runtime_checkable
class ServesManyModels(Protocol):
    """A deploy target with multi-model endpoints: ``invoke_model`` scores with the named
    model archive of the deployed package (`loyaltylens deploy invoke --target-model`)."""

    def invoke_model(self, features: CustomerFeatures, target_model: str) -> dict[str, Any]: ...


class BatchJob(Protocol):
    """What a batch engine is handed (``loyaltylens_core.batch.BatchJob`` implements it):
    the chunks of a batch not written yet, and the calls that report them back."""

    pipeline: "Pipeline"
    parts: Path
    chunks: list[tuple[int, list[str]]]
    config_path: str | None
    use: list[str]
    placement: str | None
    as_of: dt.date | None  # the feature snapshot (read_known(chunk, job.as_of)); None: the latest

    def advance(self, n: float) -> None: ...

    def write_part(self, index: int, rows: "list[dict[str, Any]] | pa.Table",
                   rejected: "dict[str, LoyaltyLensError]") -> None: ...

    def run_here(self) -> None: ...


@runtime_checkable
class BatchEngine(Protocol):
    """Computes the chunks of a batch that are not written yet (a ``BatchJob``).

    For each ``(index, customer_ids)`` in ``job.chunks`` it must call ``job.write_part(index,
    rows, rejected)`` exactly once with ``job.pipeline.run_chunk``'s rows for those customers
    (or the same rows computed elsewhere: ``Pipeline.rows_for(features, placement=job.placement)``
    on a worker), and
    ``job.advance(n)`` as customers finish; ``job.run_here()`` does all of that in this
    process. The core owns resuming, merging and rejects. ``workers`` says how many workers
    compute chunks (reported in the batch summary)."""

    workers: int

    def run(self, job: BatchJob) -> None: ...


@runtime_checkable
class FeedbackStore(Protocol):
    """Impressions (offers handed out) and outcomes (what customers did), as Arrow tables
    with the schemas of ``loyaltylens_core.kernel.feedback``. Writes are append-only and may
    come from many processes at once (service workers); a store keeps the first row per
    ``impression_id`` and per ``(impression_id, event)``.

    ``record_outcomes`` returns ``{"added": n, "duplicates": n, "unknown": [row, ...]}``:
    rows already stored (or repeated in the table) are not added again, and rows whose
    impression the store does not hold are not written (their positions are returned).
    ``record_outcomes(..., check=False)`` appends without those checks (the service's
    ``POST /v1/feedback``: unknown and repeated rows are then ignored when read).
    ``impressions_with_outcomes`` is ``impressions.JOINED_SCHEMA``: one row per impression."""

    def record_impressions(self, impressions: pa.Table) -> None: ...

    def record_outcomes(self, outcomes: pa.Table, check: bool = True) -> dict[str, Any]: ...

    def impressions_with_outcomes(self, since: dt.datetime | None = None) -> pa.Table: ...


@runtime_checkable
class Tracker(Protocol):
    """Logs a finished training run: ``card`` is the model card `train` returns (with
    ``history``, one entry per epoch), ``model_dir`` the version's directory (weights, card,
    plots; None for a model without versions). Returns what to tell the user (``run_id``, ``registered_model``, ``version``...)."""

    def log_training(self, card: dict[str, Any], model_dir: Path | None) -> dict[str, Any]: ...


@runtime_checkable
class NonBlocking(Protocol):
    """A component whose methods return in well under a millisecond without waiting on
    I/O (in-memory lookups, small numpy work). When every stage of a run says so, the
    service runs the pipeline on its event loop instead of handing each request to a
    worker thread (a thread hop costs more than such a run). Say ``False``, or leave the
    attribute out, for anything that talks to a network service or may load a model."""

    nonblocking: bool


@runtime_checkable
class Preparable(Protocol):
    """A component with one-off work before first use (build data, train, index).

    ``prepare`` must be idempotent and cheap when the work is already done.
    """

    def prepare(self) -> None: ...


# --- Optional capabilities ---------------------------------------------------------
# Declared, not guessed: the core checks a component against these once, when it is
# built, and `loyaltylens plugins --json` lists what each active component offers.


@runtime_checkable
class Closeable(Protocol):
    """Holds files, connections or clients: ``Pipeline.close()`` releases them (CLI exit,
    service shutdown, tests)."""

    def close(self) -> None: ...


@runtime_checkable
class Indexable(Protocol):
    """A retriever with an index step. ``rebuild=False`` embeds only what changed since the
    last index; ``rebuild=True`` re-embeds every offer. Returns the number of offers indexed."""

    def index(self, rebuild: bool = False) -> int: ...


@runtime_checkable
class ExplainsIndex(Protocol):
    """An Indexable retriever that says what its last ``index()`` did: ``last_index`` is a
    dict of details (``embedded``, ``kept``, ...) that `loyaltylens index` prints and adds
    to its ``--json``."""

    last_index: dict[str, Any]


@runtime_checkable
class Trainable(Protocol):
    """A propensity model that `loyaltylens train` can train; returns its model card."""

    def train(self) -> dict[str, Any]: ...


@runtime_checkable
class Exportable(Protocol):
    """A propensity model that writes ``model.pt`` and ``spec.json`` into ``out_dir`` for a
    deploy target's archive; returns the spec."""

    def export(self, out_dir: Path) -> dict[str, Any]: ...


@runtime_checkable
class ListsCustomers(Protocol):
    """A feature store that can list every customer it knows (`batch --all`)."""

    def customer_ids(self) -> list[str]: ...


@runtime_checkable
class ProvidesTrainingExamples(Protocol):
    """A feature store with point-in-time training data: labels observed strictly after
    each snapshot's ``as_of`` (what `train` uses)."""

    def training_examples(self, horizon_days: int = 30) -> TrainingSet: ...


@runtime_checkable
class Materializable(Protocol):
    """A feature store built from source data (`loyaltylens seed`); returns rows written."""

    def materialize(self, rebuild: bool = False) -> int: ...


class SnapshotInfo(Contract):
    """One feature snapshot of an offline store: what an online store copies and names."""

    as_of: dt.date
    customers: Annotated[int, Field(ge=0)]
    feature_version: str
    # Changes whenever the snapshot's rows could differ (source data, feature code, date):
    # an online store materialising the same fingerprint twice has nothing to do.
    fingerprint: str = Field(min_length=1)


@runtime_checkable
class ExportsSnapshots(Protocol):
    """An offline feature store that hands out a whole snapshot in batches (what
    `loyaltylens features materialize` copies into an online store). ``as_of=None`` is the
    latest snapshot; a date picks the latest snapshot on or before it."""

    def snapshot_info(self, as_of: dt.date | None = None) -> SnapshotInfo: ...

    def snapshot_batches(self, as_of: dt.date, batch_size: int = 10_000) -> Iterator[list[CustomerFeatures]]: ...


@runtime_checkable
class LoadsSnapshots(Protocol):
    """An online feature store filled from an offline one (``ExportsSnapshots``): it writes
    the snapshot beside the one it serves and switches only when it is complete. Returns a
    summary dict (snapshot, customers, written, seconds)."""

    def load_snapshot(
        self, source: ExportsSnapshots | None = None, as_of: dt.date | None = None, rebuild: bool = False
    ) -> dict[str, Any]: ...


@runtime_checkable
class WritesFeatureTables(Protocol):
    """A feature store whose tables LoyaltyLens can write from an offline store's snapshots
    (`loyaltylens features export --to delta PATH`): every snapshot, and the training labels
    of a ``horizon_days`` horizon. ``destination`` overrides the configured location.
    Returns a summary dict (path, rows, written, version, seconds)."""

    def export_from(
        self, source: ExportsSnapshots, destination: str | None = None, horizon_days: int = 30, rebuild: bool = False
    ) -> dict[str, Any]: ...


@runtime_checkable
class VersionedModels(Protocol):
    """A model with numbered versions and a champion: ``models`` is a
    ``loyaltylens_core.sdk.model_versions.ModelStore`` (`loyaltylens models`, `promote`, `rollback`)."""

    models: Any


@runtime_checkable
class LoadsVersions(Protocol):
    """A versioned model that can load a chosen version in place (`deploy up --variants`
    exports several versions in turn)."""

    def load(self, version: str) -> None: ...


@runtime_checkable
class SegmentedModels(Protocol):
    """A model trained per segment beside its global one: ``segment_stores()`` maps each
    segment ("tier=gold") to the ModelStore of its versions (`loyaltylens models`, and
    `promote` / `rollback --segment`)."""

    def segment_stores(self) -> dict[str, Any]: ...

    def serving_segment_models(self) -> dict[str, Any]:
        """The segment models that score customers now ("tier=gold" -> an Exportable),
        for a multi-model package."""
        ...


@runtime_checkable
class RecordsImpressionRows(Protocol):
    """A feedback store that also writes impressions given as plain rows (dicts with
    ``impressions.IMPRESSION_COLUMNS``' keys). The recorder uses it for a few rows while
    pandas is not loaded, so a single `loyaltylens run` builds no Arrow array (pyarrow's
    conversions import pandas: +0.4 s of wall time for one offer)."""

    def record_impression_rows(self, rows: Sequence[dict[str, Any]]) -> None: ...


@runtime_checkable
class ReportsFallback(Protocol):
    """A component that may serve from its own fallback (a remote retriever answering from
    the embedded one while its server is down) sets ``fallback_reason``; the pipeline
    records ``stage:reason`` in ``PipelineResult.fallbacks``. ``None`` when not falling back."""

    fallback_reason: str | None


CAPABILITIES: dict[str, type] = {
    protocol.__name__: protocol
    for protocol in (
        Preparable, Closeable, NonBlocking, BatchFeatureStore, ListsCustomers, ProvidesTrainingExamples,
        Materializable, ExportsSnapshots, LoadsSnapshots, WritesFeatureTables, BatchPropensityModel, Trainable, Exportable,
        VersionedModels, LoadsVersions, SegmentedModels, BatchRetriever, Indexable, ExplainsIndex, LooksUpOffers, BatchDecider, AsyncDecider, CapsFrequency, PreviewsDecisions,
        ReportsFallback, BatchGenerator, AsyncGenerator, RecordsImpressionRows, SplitsTraffic, ServesManyModels,
    )
}


def _stage_protocols() -> dict[str, type]:
    from loyaltylens_core.kernel.stages import STAGE_TABLE

    return {stage.name: globals()[stage.protocol] for stage in STAGE_TABLE}


STAGE_PROTOCOLS: dict[str, type] = _stage_protocols()


def capabilities_of(component: Any) -> list[str]:
    """The capability Protocols a component satisfies, by name (checked once per component).

    ``NonBlocking`` means the component declares ``nonblocking``; its value may depend on
    ``prepare()`` (a retriever is non-blocking once its query vectors are loaded), so
    read it after preparing."""
    return [name for name, protocol in CAPABILITIES.items() if isinstance(component, protocol)]


def validate_customer_id(customer_id: str) -> None:
    """Reject a malformed id before any stage sees it (CUSTOMER_ID_PATTERN, in words)."""
    from loyaltylens_core.kernel.errors import UsageError

    if not isinstance(customer_id, str) or not customer_id.strip():
        raise UsageError("customer id is empty", "pass an id such as C001")
    if not _CUSTOMER_ID.fullmatch(customer_id):
        shown = customer_id if len(customer_id) <= 40 else customer_id[:40] + "..."
        raise UsageError(
            f"customer id {shown!r} is malformed",
            "ids are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. C001",
        )
