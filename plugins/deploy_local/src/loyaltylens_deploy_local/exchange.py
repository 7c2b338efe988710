"""The parts every local endpoint app shares (one model, multi-model, variants): the ASGI
lifespan, the bounded body read, and one prediction answered as SageMaker's container does
(415 for a body that is not JSON, 400 for one the model cannot score, 500 for a failed
prediction; the server stays up)."""

from __future__ import annotations

from typing import Any, Protocol

from loyaltylens_core.util.asgi import BodyError, Disconnected, read_body, send_json


class Scorer(Protocol):
    """A loaded archive's handler (server.LoadedModel)."""

    bad_request: type[Exception]

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[Any, str]: ...


async def not_http(scope: dict[str, Any], receive: Any, send: Any) -> bool:
    """Answer the lifespan protocol; True for any scope that is not an HTTP request (the
    app then has nothing more to do)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    return bool(scope["type"] != "http")


def headers_of(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}


async def read_or_answer(scope: dict[str, Any], receive: Any, send: Any, max_body: int,
                         body_timeout_s: float) -> bytes | None:
    """The request body, or None once a bad one was answered (or the client left)."""
    try:
        return await read_body(scope, receive, max_body, body_timeout_s)
    except Disconnected:
        return None
    except BodyError as exc:
        await send_json(send, exc.status, {"error": exc.message}, exc.headers)
        return None


async def predict(send: Any, model: Scorer, body: bytes, headers: dict[str, str],
                  extra: dict[str, str] | None = None) -> None:
    content_type = headers.get("content-type", "")
    if content_type.split(";")[0].strip() != "application/json":
        await send_json(send, 415, {"error": "content type must be application/json"})
        return
    try:
        # A tiny TorchScript model scores in well under a millisecond: inline.
        payload, _ = model.invoke(body, content_type, headers.get("accept", "application/json"))
    except model.bad_request as exc:
        await send_json(send, 400, {"error": str(exc)})
        return
    except Exception as exc:  # noqa: BLE001 - a failed prediction must not kill the server
        await send_json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
        return
    await send_json(send, 200, payload.encode() if isinstance(payload, str) else payload, extra)
