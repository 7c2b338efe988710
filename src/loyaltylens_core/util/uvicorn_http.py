"""uvicorn's httptools protocol with a header read time-out and limits on the request head.

uvicorn bounds the idle time between keep-alive requests but neither the time a client
may take to send a request's head nor its size: a client that opens a connection and
sends half a request line holds that connection forever (a slowloris), and one that
sends a 64 MB header or 5,000 header fields makes the worker buffer all of it. This
subclass

- starts a timer when a connection opens and again when each request begins; if the
  headers are not complete when it fires, the connection gets a 408 and is closed;
- counts the bytes of a request's head as they arrive and the header fields as they are
  parsed; past either limit the connection gets a 431 (as nginx and h11 answer) and is
  closed, so a worker never holds more than the limit plus one socket read of a head.

Used by ``loyaltylens serve`` and the local model endpoint.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100


def _response(status: bytes, error: str, hint: str) -> bytes:
    body = json.dumps({"error": error, "hint": hint}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


_TIMEOUT_RESPONSE = _response(b"408 Request Timeout", "the request headers did not arrive in time",
                              "send the whole request promptly")


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into a parse error, which
    uvicorn answers through ``send_400_response`` (overridden here to say 431)."""


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s = HEADER_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES
    max_headers = MAX_HEADERS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._too_large: str | None = None
        self._start_header_timer()

    # -- limits (methods, so a subclass can read them from its own settings) --

    def timeout_s(self) -> float:
        return self.header_timeout_s

    def header_limits(self) -> tuple[int, int]:
        """(most bytes in a request head, most header fields)."""
        return self.max_header_bytes, self.max_headers

    # -- the head size and count --

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after feeding: a read that completes the head (and carries body bytes)
        # is fine; only a head still incomplete past the limit is refused.
        if self._in_head and self._too_large is None and self._head_bytes > self.header_limits()[0]:
            self._refuse_head(f"request headers over {self.header_limits()[0]} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._start_header_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        limit = self.header_limits()[1]
        if self._header_count > limit:
            self._too_large = f"more than {limit} request header fields"
            raise HeadTooLarge(self._too_large)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # whatever arrives next is the next request's head
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._too_large is not None:
            self._refuse_head(self._too_large)
            return
        super().send_400_response(msg)

    def _refuse_head(self, error: str) -> None:
        self._too_large = error
        self._cancel_header_timer()
        if not self.transport.is_closing():
            max_bytes, max_headers = self.header_limits()
            self.transport.write(_response(
                b"431 Request Header Fields Too Large", error,
                f"send at most {max_headers} header fields and {max_bytes} bytes of headers"))
            self.transport.close()

    # -- the header time-out --

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.timeout_s(), self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Between requests the keep-alive timer applies; ours restarts with the next one.
        self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its headers did arrive
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def with_header_timeout(seconds: float, max_header_bytes: int = MAX_HEADER_BYTES,
                        max_headers: int = MAX_HEADERS) -> type[HeaderTimeoutProtocol]:
    """The protocol class with its own time-out and head limits (uvicorn takes a class,
    not an instance)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {
        "header_timeout_s": float(seconds), "max_header_bytes": int(max_header_bytes),
        "max_headers": int(max_headers)})
