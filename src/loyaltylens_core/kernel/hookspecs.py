"""The hook specifications: one registration hook per stage, plus broadcast events.

Registration hooks receive a ``register`` callable, as in simonw/llm:

    @hookimpl
    def register_retrievers(register):
        register("duckdb", build_retriever, settings=DuckDBRetrieverSettings)

``build_retriever(settings, context)`` is called only when the stage is selected and first
used, so an entry-point module must stay cheap to import: no torch, sentence-transformers,
weaviate, openai, boto3 or google-cloud at module level.

Event hooks are called on every plugin (pluggy's call-all semantics) for tracing,
metrics, audit and feedback capture. They must not raise; an exception is reported and
does not fail the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from loyaltylens_core.kernel.stages import REGISTRATION_HOOKS, STAGES

if TYPE_CHECKING:
    from loyaltylens_core.kernel.contracts import PipelineResult
    from loyaltylens_core.kernel.registry import Register, StageEvent

hookspec = pluggy.HookspecMarker("loyaltylens")
hookimpl = pluggy.HookimplMarker("loyaltylens")

# Re-exported: the stage facts live in one table (stages.py); each entry's ``hook`` is
# one of the registration hookspecs below.
__all__ = ["REGISTRATION_HOOKS", "STAGES", "hookimpl", "hookspec"]


@hookspec
def register_feature_stores(register: "Register") -> None:
    """Register feature store implementations (stage ``feature_store``)."""


@hookspec
def register_propensity_models(register: "Register") -> None:
    """Register propensity model implementations (stage ``propensity``)."""


@hookspec
def register_embedders(register: "Register") -> None:
    """Register text embedders (stage ``embedder``), used by retrievers."""


@hookspec
def register_retrievers(register: "Register") -> None:
    """Register offer retrievers (stage ``retriever``)."""


@hookspec
def register_deciders(register: "Register") -> None:
    """Register offer deciders (stage ``decision``): eligibility, validity, caps, ranking."""


@hookspec
def register_generators(register: "Register") -> None:
    """Register copy generators (stage ``generator``)."""


@hookspec
def register_deploy_targets(register: "Register") -> None:
    """Register deploy targets for the propensity model (stage ``deploy_target``)."""


@hookspec
def register_batch_engines(register: "Register") -> None:
    """Register batch engines (stage ``batch_engine``): where `loyaltylens batch` computes."""


@hookspec
def register_feedback_stores(register: "Register") -> None:
    """Register feedback stores (stage ``feedback_store``): impressions and outcomes."""


@hookspec
def register_trackers(register: "Register") -> None:
    """Register experiment trackers (stage ``tracking``): where `loyaltylens train` logs runs."""


@hookspec
def loyaltylens_after_stage(event: "StageEvent") -> None:
    """Called after every stage of every run, with its name, plugin and latency."""


@hookspec
def loyaltylens_after_run(result: "PipelineResult") -> None:
    """Called after every completed run with the full result."""


@hookspec
def loyaltylens_after_batch(impressions: Any) -> None:
    """Called once per finished ``loyaltylens batch`` with its impressions: an Arrow table
    with ``loyaltylens_core.kernel.feedback.IMPRESSION_SCHEMA`` (one row per customer offered)."""
