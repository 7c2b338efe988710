"""The ASGI app: routes, auth, rate limits, body limits, audit, metrics, warm start.

Built by ``create_app()`` in each worker process (uvicorn's ``factory=True``). The worker
reads its options from ``LOYALTYLENS_SERVE_OPTIONS`` (JSON, set by ``loyaltylens serve``),
builds the same ``Pipeline`` the CLI runs over the data dir the parent prepared (stores
opened read-only), warms it in the background, and reports ready only then. A worker that
replaces one that died (uvicorn restarts it) warms before it accepts a connection instead,
so the live workers keep answering and no client sees its 503.

Concurrency: pipeline work runs on a bounded pool of worker threads (``threads``), never
on the event loop; a generator that can ``agenerate`` (an LLM) is awaited on the loop, so
many LLM-bound requests wait concurrently without a thread each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

import anyio
import anyio.to_thread
from fastapi import Body, FastAPI, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse, Response

from loyaltylens_core import __version__
from loyaltylens_core.util.asgi import BodyError, Disconnected, body_once, read_body, send_json
from loyaltylens_core.kernel.contracts import PipelineResult
from loyaltylens_core.kernel.errors import LoyaltyLensError, PluginError
from loyaltylens_core.service import errors, prometheus as metrics, requests
from loyaltylens_core.service.errors import NotReady, RateLimited, error, error_entry
from loyaltylens_core.service.requests import CustomerIdParam, ErrorBody, IsoDate, OffersRequest, public_placement
from loyaltylens_core.loop.impressions import open_pipeline, recorder_of
from loyaltylens_core.service.audit import AuditLog
from loyaltylens_core.service.keys import authenticate, load_keys
from loyaltylens_core.service.ratelimit import TokenBuckets
from loyaltylens_core.service.settings import OPTIONS_ENV, ServeOptions, ServeSettings  # noqa: F401 - re-exported

OFFER_PREFIX = "/v1/offers/"
OFFER_ROUTE = "/v1/offers/{customer_id}"
JSON_CONTENT_TYPE = (b"content-type", b"application/json")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"})


class State:
    """Everything a request handler reads, filled in by the warm-up task."""

    def __init__(self, options: ServeOptions, settings: ServeSettings) -> None:
        self.options = options
        self.settings = settings
        self.pipeline: Any = None
        self.ready = False
        self.failure: LoyaltyLensError | None = None
        self.keys: dict[str, str] = {}
        self.llm = False
        self.inline = False  # run() on the loop: every stage is in-process and sub-millisecond
        # arun without a thread hop: the slow stages (an LLM generator, a Redis decider) are awaited.
        self.arun_on_loop = False
        self.threads = anyio.CapacityLimiter(settings.threads)
        workers = max(1, settings.workers)
        self.buckets = TokenBuckets(settings.llm_rate_per_s / workers, settings.llm_burst / workers)
        self.audit: AuditLog | None = None
        self.warm_ids: list[str] = []
        self.thread_limits: Any = None  # threadpoolctl limits held for the worker's life
        self.started = time.monotonic()


EXAMPLE_RESULT = {
    "run_id": "5f0c0c3c2f7e4c83a1d2b3c4d5e6f708", "created_at": "2026-11-25T15:00:00Z", "customer_id": "C001",
    "features": {"customer_id": "C001", "recency_days": 3.0, "frequency_30d": 4, "monetary_90d": 320.5,
                 "offer_redemption_rate": 0.4, "channel_preference": "mobile", "engagement_score": 0.7,
                 "tier": "gold", "as_of": "2026-06-29", "feature_version": "v1"},
    "propensity": {"customer_id": "C001", "score": 0.62, "label": 1, "model_version": "propensity_v1"},
    "candidates": [], "top_offer": None, "copy": None, "fallbacks": ["no_offer"],
    "plugins": {"feature_store": {"name": "duckdb", "distribution": "loyaltylens-feature-duckdb", "version": "0.1.0"}},
    "latency_ms": {"feature_store": 0.01, "propensity": 0.2, "retriever": 0.07, "generator": 0.02, "total": 0.3},
    "contract_version": "1",
}


def create_app(options: ServeOptions | None = None) -> GuardMiddleware:
    """One worker's app (uvicorn calls this with no arguments: options from the env):
    FastAPI inside GuardMiddleware, which is outermost so the hot GET it answers itself
    passes through no other layer."""
    options = options or ServeOptions.from_env()
    settings = ServeSettings.model_validate(options.settings)
    state = State(options, settings)

    async def lifespan(app: FastAPI) -> Any:
        warm: asyncio.Task[None] | None = None
        if ready_workers() > 0:
            # Another worker of this service is serving: this one replaces a worker that
            # died. uvicorn accepts connections only after startup, so warming here sends
            # every request to the live workers meanwhile instead of answering 503.
            await _warm(state, guarded)
        else:  # the service is starting: answer /healthz (and 503 on /readyz) while warming
            warm = asyncio.create_task(_warm(state, guarded))
        try:
            yield
        finally:
            if warm is not None:
                warm.cancel()
            if state.pipeline is not None:
                await anyio.to_thread.run_sync(state.pipeline.close)
            if state.audit is not None:
                state.audit.close()
            metrics.worker_exited(os.getpid())

    app = FastAPI(
        title="LoyaltyLens",
        version=__version__,
        summary="Personalised loyalty offers at request time: the LoyaltyLens pipeline behind HTTP.",
        lifespan=lifespan,
        # Our errors in every response schema, FastAPI's own 422 shape replaced by ours.
        responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
        # A redirect to the slash-less path would be built from the client's Host header.
        redirect_slashes=False,
    )
    _routes(app, state)
    errors.install(app)
    app.openapi = lambda: _schema_with_placements(app, state)  # type: ignore[method-assign]
    guarded = GuardMiddleware(app, state)
    return guarded


def _schema_with_placements(app: FastAPI, state: State) -> dict[str, Any]:
    """FastAPI's schema with the configured placements as the enum of every ``placement``
    (any other name is a 400): they are known once the pipeline is built, so a schema asked
    for while warming is not kept."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)
    if state.pipeline is None:
        app.openapi_schema = None
        return schema
    config = state.pipeline.config
    requests.publish_placements(schema, sorted({"default", config.core.placement, *config.placements}))
    return schema


async def _warm(state: State, app: Any) -> None:
    """Build, prepare and exercise the pipeline off the event loop, then send a few
    requests through the whole ASGI stack in-process (routing, serialisation, metrics
    children, the audit descriptor are all made on first use), then say ready."""
    try:
        await anyio.to_thread.run_sync(_build_and_warm, state)
        audit, state.audit = state.audit, None  # warm-up requests are not served offers
        state.ready = True
        for customer_id in state.warm_ids[:5]:
            await _self_request(app, "GET", f"/v1/offers/{customer_id}")
            await _self_request(app, "POST", "/v1/offers", json.dumps({"customer_ids": [customer_id]}).encode())
        state.audit = audit
        recorder = recorder_of(state.pipeline)
        if recorder is not None:  # from here on, offers are handed out
            recorder.enabled = True
        if audit is not None:
            audit.open()
        metrics.prepare_children()
        # Warming made many objects (the index, the score memo): collect now and move the
        # survivors out of the collector's way, so no early request pays a full collection.
        gc.collect()
        gc.freeze()
        mark_ready()
    except LoyaltyLensError as exc:
        state.failure = exc
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - report, keep /healthz answering
        state.failure = PluginError(f"the pipeline failed to start: {type(exc).__name__}: {exc}",
                                    "see the server log")
        print(f"error: {state.failure}", file=sys.stderr)


async def _self_request(app: Any, method: str, path: str, body: bytes = b"") -> None:
    """One request through the app without a socket; GuardMiddleware leaves it out of
    the metrics (scope["loyaltylens_warmup"])."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"warmup"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "loyaltylens_warmup": True,
    }
    async def never_disconnects() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, body_once(body, never_disconnects), send)


def _build_and_warm(state: State) -> None:
    from threadpoolctl import threadpool_limits

    from loyaltylens_core.kernel.pipeline import RUN_STAGES

    # Process-wide, for the worker's life (kept referenced so it is never undone).
    state.thread_limits = threadpool_limits(limits=state.settings.blas_threads)
    state.keys = load_keys(os.environ, state.settings.api_keys_file)
    pipeline = open_pipeline(state.options.config, use=state.options.use, read_only=True, source="serve")
    recorder = recorder_of(pipeline)
    if recorder is not None:  # warm-up runs hand nothing out: not impressions
        recorder.enabled = False
        from loyaltylens_core.kernel.feedback import from_results

        from_results([], "serve")  # Arrow's conversions load pandas once, here, not in the first flush
    pipeline.prepare()
    state.pipeline = pipeline
    state.audit = AuditLog(pipeline.config.core.data_dir / "audit" / "audit.jsonl",
                           state.settings.audit_max_bytes, state.settings.audit_backups)
    # An experiment variant may swap the generator (to an LLM) or pin another model: its
    # customers must not run on the event loop, and an LLM variant's requests are rate limited.
    variants_change = any(e.stages() for e in pipeline.config.experiments.values())
    swaps_generator = any(v.generator for e in pipeline.config.experiments.values() for v in e.variants)
    state.llm = "AsyncGenerator" in pipeline.capabilities("generator") or swaps_generator
    nonblocking = {stage: "NonBlocking" in pipeline.capabilities(stage)
                   and pipeline.component(stage).nonblocking is True for stage in RUN_STAGES}
    state.inline = not state.llm and not variants_change and all(nonblocking.values())
    # An LLM generator is awaited on the loop, and so is a decider that waits on a network
    # counter store (AsyncDecider: Redis); when every other stage is non-blocking, the whole
    # run stays on the loop (no thread hop, no queue for the pool).
    awaited = {"generator": "AsyncGenerator" in pipeline.capabilities("generator"),
               "decision": "AsyncDecider" in pipeline.capabilities("decision")}
    state.arun_on_loop = not variants_change and all(
        ok or awaited.get(stage, False) for stage, ok in nonblocking.items())
    # Warm-up runs call no LLM (they would cost money and count against its limits).
    lists = "ListsCustomers" in pipeline.capabilities("feature_store")
    everyone = pipeline.component("feature_store").customer_ids() if lists and not state.llm else []
    sample = state.warm_ids = everyone[:20]
    first = None
    for i in range(state.settings.warmup_runs if sample else 0):
        first = pipeline.run(sample[i % len(sample)])
    if sample and state.settings.warmup_runs:
        pipeline.run_many(sample)
        # Score the whole latest snapshot once: a model that memoises scores by feature
        # values then answers any known customer's first request from memory.
        for start in range(0, len(everyone), 10_000):
            pipeline.predict_many(pipeline.read_many(everyone[start : start + 10_000]))
    refs = pipeline.components.run_plugin_refs()
    model_version = first.propensity.model_version if first else ""
    metrics.BUILD_INFO.labels(
        refs["feature_store"].name, refs["propensity"].name, refs["retriever"].name, refs["generator"].name,
        model_version, pipeline.component("generator").prompt_version, __version__,
    ).set(1)


def _ready_dir() -> Path | None:
    """Where workers say they are ready: this service's own directory (``serve`` gives
    each service instance one, for its metrics)."""
    root = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(root) if root else None


def mark_ready() -> None:
    directory = _ready_dir()
    if directory is not None:
        (directory / f"ready-{os.getpid()}").touch()


def ready_workers() -> int:
    """Workers of this service that finished warming and are still alive."""
    directory = _ready_dir()
    if directory is None:
        return 1
    alive = 0
    for marker in directory.glob("ready-*"):
        try:
            os.kill(int(marker.name.removeprefix("ready-")), 0)
            alive += 1
        except (ValueError, ProcessLookupError):
            marker.unlink(missing_ok=True)
        except PermissionError:
            alive += 1
    return alive


def pipeline_of(state: State) -> Any:
    """The worker's pipeline, or the error that says why there is none yet."""
    if state.failure is not None:
        raise state.failure
    if not state.ready:
        raise NotReady()
    return state.pipeline


def take_rate(state: State, key_name: str | None, cost: int) -> None:
    """Charge an LLM-bound request to its key's token bucket (429 when it is empty)."""
    if not state.llm:
        return
    wait = state.buckets.take(key_name or "anonymous", cost)
    if wait:
        metrics.RATE_LIMITED.inc()
        raise RateLimited(wait)


def write_audit(state: State, key_name: str | None, results: list[PipelineResult]) -> None:
    if state.audit is None or not results:
        return
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    state.audit.write_many([
        {
            "time": now, "key": key_name, "customer_id": r.customer_id,
            "offer_id": r.top_offer.offer_id if r.top_offer else None,
            "model_version": r.propensity.model_version, "segment": r.propensity.segment,
            "experiments": dict(r.experiments),
            "prompt_version": r.copy_.prompt_version if r.copy_ else None,
            "fallbacks": list(r.fallbacks), "latency_ms": round(r.latency_ms.get("total", 0.0), 3),
            "run_id": r.run_id,
        }
        for r in results
    ])


async def offer_json(state: State, key_name: str | None, customer_id: str, as_of: dt.date | None = None,
                     placement: str | None = None) -> bytes:
    """``GET /v1/offers/{customer_id}``'s body: run, count, audit. Called by the FastAPI
    route and by the hot path in GuardMiddleware, so both answer alike."""
    pipeline = pipeline_of(state)
    take_rate(state, key_name, 1)
    result: PipelineResult
    if state.inline:  # every stage is in-process and sub-millisecond: a thread hop costs more
        result = pipeline.run(customer_id, as_of=as_of, placement=placement)
    else:
        result = await pipeline.arun(customer_id, as_of=as_of, threads=state.threads, placement=placement,
                                     inline=state.arun_on_loop)
    metrics.observe_result(result, llm=state.llm)
    write_audit(state, key_name, [result])
    return result.model_dump_json(by_alias=True).encode()


def _routes(app: FastAPI, state: State) -> None:
    def rate_limit(request: Request, cost: int) -> None:
        take_rate(state, getattr(request.state, "key_name", None), cost)

    def audit(request: Request, results: list[PipelineResult]) -> None:
        write_audit(state, getattr(request.state, "key_name", None), results)

    @app.get("/healthz", tags=["service"], summary="The process is alive")
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "pid": os.getpid(), "uptime_s": round(time.monotonic() - state.started, 3)}

    @app.get("/readyz", tags=["service"], summary="200 once every selected stage is built and warm, 503 before",
             responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        if state.failure is not None:
            return error(503, state.failure.message, state.failure.hint)
        if not state.ready:
            return error(503, "warming up", "retry shortly", headers={"Retry-After": "1"})
        ready, wanted = ready_workers(), state.settings.workers
        if ready < wanted:  # the service is ready when every worker is, not one of them
            return error(503, f"warming up ({ready} of {wanted} workers ready)", "retry shortly",
                          headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready", "workers": wanted})

    @app.get("/metrics", tags=["service"], summary="Prometheus exposition (all workers)",
             response_class=Response,
             responses={200: {"description": "Prometheus text format", "content": {metrics.CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    @app.get(
        "/v1/offers/{customer_id}", tags=["offers"],
        summary="The personalised offer for one customer (the same JSON as `loyaltylens run --json`)",
        responses={200: {"model": PipelineResult, "content": {"application/json": {"example": EXAMPLE_RESULT}}},
                   400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 429: {"model": ErrorBody}},
    )
    async def offer(
        request: Request,
        # The pattern is published, not enforced here: the pipeline's own check answers a
        # malformed id with the same 400 and message as the CLI.
        customer_id: str = PathParam(..., examples=["C001"], json_schema_extra=CustomerIdParam),
        as_of: IsoDate | None = Query(None, description="Point-in-time features as of this date (YYYY-MM-DD)"),
        placement: str | None = Query(None, description="The placement to decide for ([placements.NAME])"),
    ) -> Response:
        body = await offer_json(state, getattr(request.state, "key_name", None), customer_id, as_of,
                                public_placement(placement))
        return Response(body, media_type="application/json")

    @app.get(
        "/v1/campaigns/{name}/offer/{customer_id}", tags=["offers"],
        summary="A campaign's decision for one customer at send time (connected content): 200 with the "
                "result for a treated customer, 204 for a held-out one, 404 outside the audience",
        responses={200: {"description": "{campaign, run, arm, channel, result}: result is the PipelineResult"},
                   204: {"description": "Held out: send nothing (header LoyaltyLens-Arm: holdout)"},
                   400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody},
                   429: {"model": ErrorBody}},
    )
    async def campaign_offer(
        request: Request, name: str = PathParam(..., examples=["gold-monthly"]),
        customer_id: str = PathParam(..., examples=["C001"], json_schema_extra=CustomerIdParam),
    ) -> Response:
        from loyaltylens_core.kernel.contracts import validate_customer_id
        from loyaltylens_core.kernel.errors import UsageError
        from loyaltylens_core.campaign import live, runner

        pipeline = pipeline_of(state)
        rate_limit(request, 1)
        validate_customer_id(customer_id)
        try:
            campaign = pipeline.config.campaign(name)
        except UsageError as exc:
            return error(404, exc.message, exc.hint)
        day = dt.datetime.now(dt.timezone.utc).date()
        run_id = live.run_id_for_day(campaign, day)
        try:
            runner.check_day(campaign, day)
        except UsageError as exc:
            return error(409, exc.message, exc.hint)
        arm, features = await anyio.to_thread.run_sync(live.arm_of, pipeline, campaign, customer_id,
                                                       limiter=state.threads)
        if arm == "not_in_audience":
            return error(404, f"customer {customer_id!r} is not in campaign {name!r}'s audience",
                         "send this campaign to its audience only (loyaltylens campaign show NAME)")
        headers = {"LoyaltyLens-Arm": arm, "LoyaltyLens-Campaign-Run": run_id}
        if arm == "holdout":
            await anyio.to_thread.run_sync(live.record_sent_nothing, pipeline, campaign, run_id, arm, features,
                                           limiter=state.threads)
            return Response(status_code=204, headers=headers)
        tags = live.tags_of(campaign, run_id, arm, features)
        result = await pipeline.arun(customer_id, threads=state.threads, placement=campaign.placement_key(run_id),
                                     inline=state.arun_on_loop,
                                     tags=tags)
        metrics.observe_result(result, llm=state.llm)
        audit(request, [result])
        if result.top_offer is None:  # capped or nothing eligible: still treated (intention to treat)
            await anyio.to_thread.run_sync(live.record_sent_nothing, pipeline, campaign, run_id, arm, features,
                                           limiter=state.threads)
        body = {"campaign": name, "run": run_id, "arm": arm, "channel": campaign.channel_for(features.channel_preference),
                "result": result.to_json_dict()}
        return Response(json.dumps(body), media_type="application/json", headers=headers)

    @app.post(
        "/v1/offers", tags=["offers"],
        summary="Offers for many customers at once, in order; an unknown or malformed id is an error entry",
        responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 429: {"model": ErrorBody}},
    )
    async def offers(request: Request, body: OffersRequest = Body(...)) -> Response:
        pipeline = pipeline_of(state)
        if len(body.customer_ids) > state.settings.batch_limit:
            return error(413, f"{len(body.customer_ids)} customer ids is over the limit of {state.settings.batch_limit}",
                          "split the request, or raise [serve] batch_limit")
        placement = public_placement(body.placement)
        rate_limit(request, len(body.customer_ids))
        outcomes = await anyio.to_thread.run_sync(
            lambda: pipeline.run_many(body.customer_ids, as_of=body.as_of, placement=placement),
            limiter=state.threads
        )
        served = [o for o in outcomes if isinstance(o, PipelineResult)]
        for result in served:
            metrics.observe_result(result, llm=state.llm)
        audit(request, served)
        entries = [
            {"customer_id": o.customer_id, "ok": True, "result": o.to_json_dict()} if isinstance(o, PipelineResult)
            else error_entry(cid, o)
            for cid, o in zip(body.customer_ids, outcomes)
        ]
        return Response(json.dumps({"results": entries}, default=str), media_type="application/json")

    @app.post(
        "/v1/score", tags=["model"],
        summary="Raw features in, propensity out: the SageMaker / local endpoint contract",
        description=(
            "A JSON object of features, `{\"instances\": [...]}` or a bare list of them. `tier` may be left "
            "out: the score is then the mean over every tier. Answers `{\"propensity_score\", \"model_version\"}` "
            "for one object, `{\"predictions\": [...]}` otherwise."
        ),
        responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}},
        openapi_extra=requests.score_openapi(),
    )
    async def score(request: Request) -> Response:
        pipeline = pipeline_of(state)
        body = await request.body()
        reply = await anyio.to_thread.run_sync(
            requests.score, pipeline, body, request.headers.get("content-type", ""), limiter=state.threads
        )
        return JSONResponse(reply)

    @app.post(
        "/v1/feedback", tags=["offers"], status_code=202,
        summary="Outcomes of offers handed out: impression_id (a result's run_id), event, optional rating and time",
        description=(
            "`{\"outcomes\": [{\"impression_id\": ..., \"event\": \"redeemed\", \"rating\": 5}]}` or one "
            "outcome object. Stored at once (202 after the write); a repeated (impression, event) and an id naming no "
            "impression are ignored when reports read them, as `loyaltylens feedback import` would reject them."
        ),
        responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}},
        openapi_extra=requests.feedback_openapi(),
    )
    async def feedback(request: Request) -> Response:
        pipeline = pipeline_of(state)
        body = requests.parse_feedback(await request.body())
        if len(body.outcomes) > state.settings.batch_limit:
            return error(413, f"{len(body.outcomes)} outcomes is over the limit of {state.settings.batch_limit}",
                          "split the request, or raise [serve] batch_limit")
        table = requests.outcome_table(body.outcomes)
        store = pipeline.component("feedback_store")
        await anyio.to_thread.run_sync(lambda: store.record_outcomes(table, check=False), limiter=state.threads)
        return JSONResponse({"accepted": len(body.outcomes)}, status_code=202)

    @app.get("/v1/plugins", tags=["service"], summary="The plugin serving each stage")
    async def plugins() -> dict[str, Any]:
        pipeline = pipeline_of(state)
        return {stage: ref.model_dump() for stage, ref in pipeline.components.run_plugin_refs().items()}

    @app.get("/v1/config", tags=["service"], summary="The resolved configuration, secrets masked")
    async def config() -> dict[str, Any]:
        pipeline = pipeline_of(state)
        described: dict[str, Any] = pipeline.config.describe(pipeline.registry)
        return described


class GuardMiddleware:
    """Pure ASGI (no per-request task or thread): API keys, request body size and read
    time, and the request metrics. A body is read whole, within ``body_timeout_s`` and
    ``max_body_bytes``, before any handler runs: a client that stalls or lies about its
    Content-Length costs a coroutine, never a thread, and gets 408/413."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_tracking(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracking)
        finally:
            if scope.get("loyaltylens_warmup"):
                return  # noqa: B012 - the warm-up's own requests are not traffic
            label = scope.get("loyaltylens_route") or getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.observe_request(label, scope.get("method", ""), str(status_holder["status"]),
                                    time.perf_counter() - started)

    async def _guarded(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        settings = self.state.settings
        path = scope.get("path", "")
        if self.state.keys and path not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            name = authenticate(headers.get(b"authorization", b"").decode("latin-1"), self.state.keys)
            if name is None:
                await send_json(send, 401, {"error": "missing or invalid API key",
                                             "hint": "send Authorization: Bearer <key>"},
                                 {"www-authenticate": "Bearer"})
                return
            scope.setdefault("state", {})["key_name"] = name
        method = scope.get("method")
        customer_id = hot_customer(scope, path) if method == "GET" else None
        if customer_id is not None:
            await self._offer(scope, receive, send, customer_id)
            return
        if method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, settings.max_body_bytes, settings.body_timeout_s)
        except Disconnected:
            return
        except BodyError as exc:
            await send_json(send, exc.status, {"error": exc.message, "hint": exc.hint}, exc.headers)
            return
        await self.app(scope, body_once(body, receive), send)

    async def _offer(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any],
                     customer_id: str) -> None:
        scope["loyaltylens_route"] = OFFER_ROUTE
        key_name = (scope.get("state") or {}).get("key_name")
        try:
            body = await offer_json(self.state, key_name, customer_id)
        except Exception as exc:  # noqa: BLE001 - answered as FastAPI's handlers would
            await errors.response_for(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), JSON_CONTENT_TYPE]})
        await send({"type": "http.response.body", "body": body})


def hot_customer(scope: dict[str, Any], path: str) -> str | None:
    """The customer id of a hot GET, answered by GuardMiddleware without FastAPI's routing,
    dependency solving and exception layers: ``/v1/offers/{id}`` with no query string and
    no root path. Anything else (``?as_of=``, ``?placement=``, a trailing slash) is None and
    takes the FastAPI route, which validates and documents the parameters; both call
    ``offer_json``."""
    if not path.startswith(OFFER_PREFIX) or scope.get("query_string") or scope.get("root_path"):
        return None
    rest = path[len(OFFER_PREFIX):]
    return rest if rest and "/" not in rest else None
