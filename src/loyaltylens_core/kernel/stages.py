"""The one table of stages: everything the core knows about a stage, in one place.

Hookspecs, config defaults, the pipeline, the CLI, the fakes, the plugin generator and the
docs all read this table. Adding a stage is one entry here plus its registration hookspec
in ``hookspecs.py``.

Kept free of pydantic and the contracts (the Protocols are named, resolved on use) so that
``loyaltylens --help`` imports it for nothing.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of LoyaltyLens."""

    name: str
    hook: str  # the registration hookspec's name
    protocol: str  # the stage Protocol's name in ``loyaltylens_core.kernel.contracts``
    default: str  # the plugin selected when config says nothing
    in_run: bool  # built for every `loyaltylens run` (others are pulled in on demand)
    capabilities: tuple[str, ...]  # optional capability Protocols that mean something here
    summary: str  # one line for docs and `loyaltylens plugin new`


_COMMON = ("Preparable", "Closeable", "NonBlocking")

STAGE_TABLE: tuple[Stage, ...] = (
    Stage("feature_store", "register_feature_stores", "FeatureStore", "duckdb", True,
          (*_COMMON, "BatchFeatureStore", "ListsCustomers", "ProvidesTrainingExamples", "Materializable",
           "ExportsSnapshots", "LoadsSnapshots", "WritesFeatureTables", "ReportsFallback"),
          "reads a customer's point-in-time features"),
    Stage("propensity", "register_propensity_models", "PropensityModel", "torch", True,
          (*_COMMON, "BatchPropensityModel", "Trainable", "Exportable", "VersionedModels",
           "LoadsVersions", "SegmentedModels"),
          "scores how likely a customer is to redeem an offer"),
    Stage("embedder", "register_embedders", "Embedder", "sentence-transformers", False,
          ("Preparable", "Closeable"),
          "turns texts into L2-normalised vectors (used by retrievers)"),
    Stage("retriever", "register_retrievers", "Retriever", "duckdb", True,
          (*_COMMON, "BatchRetriever", "Indexable", "ExplainsIndex", "LooksUpOffers", "ReportsFallback"),
          "finds the offers that best fit a query"),
    Stage("decision", "register_deciders", "Decider", "rules", True,
          (*_COMMON, "BatchDecider", "CapsFrequency", "PreviewsDecisions"),
          "chooses which retrieved offers a customer gets: eligibility, validity, caps, ranking"),
    Stage("generator", "register_generators", "Generator", "template", True,
          (*_COMMON, "BatchGenerator", "AsyncGenerator"),
          "writes the offer copy"),
    Stage("deploy_target", "register_deploy_targets", "DeployTarget", "local", False,
          ("Closeable",),
          "ships the propensity model to an endpoint"),
    Stage("batch_engine", "register_batch_engines", "BatchEngine", "local", False,
          ("Closeable",),
          "computes a batch's chunks: in this process, or on a cluster"),
    Stage("feedback_store", "register_feedback_stores", "FeedbackStore", "duckdb", False,
          ("Closeable", "RecordsImpressionRows"),
          "keeps the offers handed out (impressions) and what customers did with them (outcomes)"),
    Stage("tracking", "register_trackers", "Tracker", "jsonl", False,
          ("Closeable",),
          "logs training runs (parameters, metrics per epoch, model card, model) to an experiment tracker"),
)

STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGE_TABLE}
STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE)
REGISTRATION_HOOKS: dict[str, str] = {s.name: s.hook for s in STAGE_TABLE}
DEFAULT_STAGES: dict[str, str] = {s.name: s.default for s in STAGE_TABLE}
# The stages a run needs; the embedder is pulled in by retrievers that want it.
RUN_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.in_run)
