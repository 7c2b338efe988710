"""Prometheus metrics for the service, correct across worker processes.

``loyaltylens serve`` always runs prometheus-client in multiprocess mode: the parent sets
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory in the data dir before any worker
starts, every worker writes its samples there, and ``/metrics`` on any worker aggregates
all of them. (One worker is the same code with one writer.)
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("loyaltylens_requests_total", "HTTP requests by route and status", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "loyaltylens_request_seconds", "HTTP request latency by route", ["route"], buckets=LATENCY_BUCKETS
)
STAGE_SECONDS = Histogram(
    "loyaltylens_stage_seconds", "Pipeline latency per stage (and total) per customer", ["stage"],
    buckets=LATENCY_BUCKETS,
)
FALLBACKS = Counter("loyaltylens_fallbacks_total", "Fallbacks taken, by kind", ["kind"])
DROPPED = Counter(
    "loyaltylens_decision_dropped_total", "Retrieved offers the decision dropped, by placement and reason",
    ["placement", "reason"],
)
OFFERS = Counter("loyaltylens_offers_served_total", "Offers handed out (one per customer answered)")
SCORED = Counter(
    "loyaltylens_propensity_scored_total",
    "Customers answered, by the segment whose model scored them (global: one model for all) and its version",
    ["segment", "model_version"],
)
LLM_CALLS = Counter("loyaltylens_llm_calls_total", "Copy generations by an LLM generator")
LLM_ERRORS = Counter("loyaltylens_llm_errors_total", "LLM generations that fell back (errors, invalid output)")
LLM_SECONDS = Histogram("loyaltylens_llm_seconds", "LLM generation latency", buckets=LATENCY_BUCKETS)
PLUGIN_ERRORS = Counter(
    "loyaltylens_plugin_errors_total", "Requests failed by a plugin raising at run time, by stage and plugin",
    ["stage", "plugin"],
)
RATE_LIMITED = Counter("loyaltylens_rate_limited_total", "Requests refused by the LLM rate limit")
BUILD_INFO = Gauge(
    "loyaltylens_build_info", "The plugins, model version and prompt version being served (value 1)",
    ["feature_store", "propensity", "retriever", "generator", "model_version", "prompt_version", "version"],
    multiprocess_mode="max",
)


def prepare_children() -> None:
    """Make the label children of the hot path now: in multiprocess mode the first use of
    a label set allocates its entry in the worker's metrics file, which the first real
    request would otherwise pay for."""
    for route, method in (("/v1/offers/{customer_id}", "GET"), ("/v1/offers", "POST"), ("/v1/score", "POST")):
        _REQUEST_CHILDREN[(route, method, "200")] = (REQUESTS.labels(route, method, "200"),
                                                     REQUEST_SECONDS.labels(route))
    from loyaltylens_core.kernel.stages import RUN_STAGES

    for stage in (*RUN_STAGES, "total"):
        _stage_child(stage)


_STAGE_CHILDREN: dict[str, Any] = {}
_REQUEST_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_KEPT_METHODS = frozenset({"GET", "POST"})  # a client may send any method name: those are not kept


def observe_request(route: str, method: str, status: str, seconds: float) -> None:
    """One HTTP request in ``REQUESTS`` and ``REQUEST_SECONDS``, through label children
    kept per (route, method, status) for the methods the routes take."""
    children = _REQUEST_CHILDREN.get((route, method, status))
    if children is None:
        children = (REQUESTS.labels(route, method, status), REQUEST_SECONDS.labels(route))
        if method in _KEPT_METHODS:
            _REQUEST_CHILDREN[(route, method, status)] = children
    children[0].inc()
    children[1].observe(seconds)


def _stage_child(stage: str) -> Any:
    """``STAGE_SECONDS.labels(stage)``, kept: ``labels()`` takes a lock and builds a key on
    every call, seven times a request."""
    child = _STAGE_CHILDREN.get(stage)
    if child is None:
        child = _STAGE_CHILDREN[stage] = STAGE_SECONDS.labels(stage)
    return child


def observe_result(result: Any, *, llm: bool) -> None:
    """Stage latencies, fallbacks and LLM figures of one PipelineResult."""
    for stage, ms in result.latency_ms.items():
        _stage_child(stage).observe(ms / 1000)
    for kind in result.fallbacks:
        FALLBACKS.labels(kind).inc()
    if result.decision is not None:
        for reason, n in result.decision.dropped.items():
            DROPPED.labels(result.decision.placement, reason).inc(n)
    OFFERS.inc()
    SCORED.labels(result.propensity.segment or "global", result.propensity.model_version).inc()
    if llm and result.copy_ is not None:
        LLM_CALLS.inc()
        LLM_SECONDS.observe(result.latency_ms.get("generator", 0.0) / 1000)
        if any(kind.startswith("generator:") for kind in result.fallbacks):
            LLM_ERRORS.inc()


def exposition() -> bytes:
    """Every worker's samples, aggregated (multiprocess mode), in the text format."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters and histograms stay summed)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
