"""Framework-free ASGI helpers shared by every HTTP server the project runs on uvicorn
(``loyaltylens serve`` and the local model endpoint): read a request body within a size
and a time limit, and answer JSON. Standard library only.

Reading the body whole, with both limits, before any handler runs means a client that
stalls halfway or sends less than its Content-Length costs one coroutine until the
time-out, never a thread or a worker, and gets a 408 (or 413 when it sends too much).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyError(Exception):
    """A request body that cannot be accepted: the status and message to answer with."""

    def __init__(self, status: int, message: str, hint: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint
        self.headers = headers or {}


class Disconnected(Exception):
    """The client went away before sending its whole body."""


def declared_length(scope: dict[str, Any], max_bytes: int) -> int | None:
    """The Content-Length header, checked: a negative or non-numeric one is a 400, one
    over the limit a 413 before a byte of the body is read."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = -1
            if length < 0:
                raise BodyError(400, "Content-Length is not a non-negative integer", "send a valid Content-Length")
            if length > max_bytes:
                raise BodyError(413, f"body over {max_bytes} bytes", "send a smaller body")
            return length
    return None


DRAIN_FACTOR = 16  # a body up to 16x the limit is read and dropped, so the client sees the 413
DRAIN_WAIT_S = 1.0  # ... for at most this long


async def read_body(scope: dict[str, Any], receive: Receive, max_bytes: int, timeout_s: float) -> bytes:
    too_big_413 = BodyError(413, f"body over {max_bytes} bytes", "send a smaller body", {"connection": "close"})
    try:
        declared_length(scope, max_bytes)
        too_big = False
    except BodyError as exc:
        if exc.status != 413:
            raise
        declared = int(dict(scope.get("headers") or ()).get(b"content-length", b"0"))
        if declared > DRAIN_FACTOR * max_bytes:
            raise too_big_413 from None  # refused at once: never wait for (or read) 100 MB
        too_big = True
        # A moderately large body is drained briefly so a client still sending sees the
        # 413; one that sends nothing gets the 413 after that second, not a 408.
        timeout_s = min(timeout_s, DRAIN_WAIT_S)
    chunks: list[bytes] = []
    size = 0

    async def read_all() -> None:
        nonlocal size, too_big
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            too_big = too_big or size > max_bytes
            # Past the limit, keep reading (and dropping) a moderately large body: a client
            # that is still sending when we answer gets a reset instead of our 413.
            if too_big and (size > DRAIN_FACTOR * max_bytes or not message.get("more_body", False)):
                raise too_big_413
            if not too_big:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(read_all(), timeout_s)
    except asyncio.TimeoutError:
        if too_big:
            raise too_big_413 from None
        raise BodyError(408, f"the request body did not arrive within {timeout_s:g} s",
                        "send the whole body promptly", {"connection": "close"}) from None
    return b"".join(chunks)


def body_once(body: bytes, then: Receive) -> Receive:
    """An ASGI ``receive`` that hands over ``body`` (already read) as one message, then
    defers to ``then`` (the connection's own receive, which reports a disconnect)."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


async def send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
