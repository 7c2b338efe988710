"""Broadcast events to every plugin through pluggy, so tryfirst/trylast ordering and
``wrapper=True`` implementations work; each listener is guarded when the registry loads
(plugins.guard_event_listeners): one that raises is reported and skipped, never failing a run."""

from __future__ import annotations

import time
from typing import Any

from loyaltylens_core.kernel.contracts import PipelineResult
from loyaltylens_core.kernel.registry import StageEvent


def after_stage(
    hooks: Any, run_id: str, customer_id: str, stage: str, plugin: str, latency: dict[str, float], started: float
) -> None:
    """Record the stage's latency in ``latency`` and tell listeners, if any (building the
    event costs more than the stage for an in-memory plugin, so only when someone listens)."""
    elapsed = (time.perf_counter() - started) * 1000
    latency[stage] = elapsed
    if hooks.loyaltylens_after_stage.get_hookimpls():
        hooks.loyaltylens_after_stage(event=StageEvent(run_id, customer_id, stage, plugin, elapsed))


def after_run(hooks: Any, result: PipelineResult) -> None:
    if hooks.loyaltylens_after_run.get_hookimpls():
        hooks.loyaltylens_after_run(result=result)
