"""Every error the service answers, in one shape: ``{"error": ..., "hint": ...}``.

The pipeline's own errors map to statuses by whose fault they are; FastAPI's and
Starlette's (an unknown route, a wrong method, a body that fails its schema) are
reshaped here so a client parses one error format, whatever produced it.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loyaltylens_core.kernel.errors import CustomerNotFound, LoyaltyLensError, PluginFault, StageError, UsageError
from loyaltylens_core.service import prometheus as metrics
from loyaltylens_core.service.ratelimit import retry_after_header


class NotReady(Exception):
    """The worker is still warming up."""


class RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


def error(status: int, message: str, hint: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status, headers=headers)


def status_for(exc: LoyaltyLensError) -> int:
    """The CLI's errors as HTTP statuses: the caller's fault 4xx, ours or a dependency's 5xx."""
    if isinstance(exc, CustomerNotFound):
        return 404
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, StageError):
        return 503
    return 500


def error_entry(customer_id: Any, exc: LoyaltyLensError) -> dict[str, Any]:
    return {"customer_id": customer_id, "ok": False, "status": status_for(exc), "error": exc.message, "hint": exc.hint}


_HTTP_HINTS = {
    404: "see /docs for the routes",
    405: "see /docs for the methods this route takes",
}


def response_for(exc: Exception) -> JSONResponse:
    """The answer to an exception a handler raised: ours by whose fault it is, anything
    else a one-line 500 (its traceback goes to the server log, never to the client).
    Shared by FastAPI's exception handlers and the hot GET path, which answers without
    FastAPI."""
    if isinstance(exc, LoyaltyLensError):
        if isinstance(exc, PluginFault):
            metrics.PLUGIN_ERRORS.labels(exc.stage, exc.plugin).inc()
            traceback.print_exception(exc, file=sys.stderr)  # the plugin's traceback, for its author
        return error(status_for(exc), exc.message, exc.hint)
    if isinstance(exc, NotReady):
        return error(503, "warming up", "retry when /readyz answers 200", headers={"Retry-After": "1"})
    if isinstance(exc, RateLimited):
        return error(429, "rate limit for LLM requests reached for this key", "retry after the Retry-After seconds",
                     headers={"Retry-After": retry_after_header(exc.wait)})
    traceback.print_exception(exc, file=sys.stderr)
    return error(500, f"internal error ({type(exc).__name__})", "see the server log")


def install(app: FastAPI) -> None:
    async def ours(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    for kind in (LoyaltyLensError, NotReady, RateLimited, Exception):
        app.add_exception_handler(kind, ours)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if err.get("type") == "json_invalid":
            return error(400, "body is not JSON", "send a JSON object (content-type: application/json)")
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        return error(422, f"{where}: {err.get('msg', 'invalid')}", "see the request schema in /docs")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own: 404 for an unknown route, 405 (with Allow) for a wrong method,
        # 400 for a body FastAPI could not parse at all.
        message = exc.detail if isinstance(exc.detail, str) else "invalid request"
        if exc.status_code == 404:
            message = f"no route {request.url.path[:100]!r}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:100]!r}"
        return error(exc.status_code, message, _HTTP_HINTS.get(exc.status_code, "see /docs"),
                     headers=dict(exc.headers or {}))
