"""A local OpenAI-compatible server for tests and benchmarks (127.0.0.1 only).

It speaks the real wire format of ``POST /v1/chat/completions`` so the unmodified
``openai`` client runs against it. What it answers is scripted: queue behaviours with
``script(...)``; once the queue is empty every request gets ``default``.

Behaviours: ``ok`` (valid copy built from the prompt), ``invalid_json``, ``too_long``,
``empty_field``, ``no_choices`` (a completion without choices), ``not_a_completion`` (a 200 whose
body is not JSON, as from a misrouted proxy), ``rate_limit`` (429 with retry-after), ``server_error`` (500), ``hang``
(sleeps past any sane client time-out), ``unauthorized`` (401).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from loyaltylens_core.util.httpserver import LocalHTTPServer


class StubOpenAIServer:
    def __init__(self, latency_s: float = 0.0, default: str = "ok") -> None:
        self.latency_s = latency_s
        self.default = default
        self.queue: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.hang_s = 5.0
        self.server = LocalHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "StubOpenAIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *behaviours: str) -> None:
        with self.lock:
            self.queue.extend(behaviours)

    def _next(self) -> str:
        with self.lock:
            return self.queue.pop(0) if self.queue else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Send headers and body in one segment: otherwise Nagle + delayed ACK add
            # ~40 ms to every keep-alive response and swamp the latency being simulated.
            disable_nagle_algorithm = True
            wbufsize = 1 << 16

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                behaviour = stub._next()
                with stub.lock:
                    stub.requests.append({"behaviour": behaviour, "body": request,
                                          "authorization": self.headers.get("Authorization", ""),
                                          "content_type": self.headers.get("Content-Type", "")})
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    time.sleep(stub.latency_s)
                    self._answer(behaviour, request)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def _answer(self, behaviour: str, request: dict[str, Any]) -> None:
                if behaviour == "rate_limit":
                    self._send(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                               {"retry-after-ms": "10", "retry-after": "0"})
                    return
                if behaviour == "server_error":
                    self._send(500, {"error": {"message": "The server had an error", "type": "server_error"}})
                    return
                if behaviour == "unauthorized":
                    self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                    return
                if behaviour == "hang":
                    time.sleep(stub.hang_s)
                if behaviour == "not_a_completion":
                    self._send(200, b"<html>upstream proxy error</html>")
                    return
                user = next((m["content"] for m in request.get("messages", []) if m["role"] == "user"), "")
                title = next((line[len("Offer: "):] for line in user.splitlines() if line.startswith("Offer: ")), "an offer")
                copy = {"headline": f"Just for you: {title}"[:80], "body": f"{title}. Enjoy it soon.", "cta": "Claim now"}
                if behaviour == "too_long":
                    copy["headline"] = "x" * 500
                if behaviour == "empty_field":
                    copy["cta"] = ""
                content = "{not json" if behaviour == "invalid_json" else json.dumps(copy)
                self._send(200, {
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model", "stub"),
                    "choices": [] if behaviour == "no_choices" else [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                })

        return Handler


def main(argv: list[str] | None = None) -> None:
    """Run the stub on its own: ``python -m loyaltylens_generator_openai.testing --port 8765``.

    Benchmarks use this so that client and server do not share one interpreter (and one GIL).
    """
    import argparse

    parser = argparse.ArgumentParser(description="OpenAI-compatible stub server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per completion")
    parser.add_argument("--default", default="ok", help="behaviour for every request")
    args = parser.parse_args(argv)
    stub = StubOpenAIServer(latency_s=args.latency, default=args.default)
    if args.port:
        stub.server.server_close()
        stub.server = LocalHTTPServer(("127.0.0.1", args.port), stub._handler())
    print(stub.base_url, flush=True)
    try:
        stub.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
