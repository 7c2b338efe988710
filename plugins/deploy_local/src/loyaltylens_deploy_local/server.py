"""A SageMaker-contract model server: GET /ping, POST /invocations.

It extracts the archive safely, imports its code/inference.py and calls model_fn /
input_fn / predict_fn / output_fn exactly as the SageMaker toolkit does. Bad requests
get a 4xx with a JSON error and the server stays up.

    python -m loyaltylens_deploy_local.server --archive model.tar.gz --port 8080
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from loyaltylens_core.httpserver import LocalHTTPServer
from loyaltylens_core.archive import safe_extract


class LoadedModel:
    def __init__(self, archive: Path, workdir: Path) -> None:
        model_dir = safe_extract(archive, workdir / "model")
        spec = importlib.util.spec_from_file_location(
            f"loyaltylens_inference_{id(self)}", model_dir / "code" / "inference.py"
        )
        if spec is None or spec.loader is None:
            raise RuntimeError(f"{archive} has no code/inference.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.module = module
        self.model = module.model_fn(str(model_dir))
        self.bad_request = getattr(module, "BadRequest", ValueError)

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[str, str]:
        data = self.module.input_fn(body, content_type)
        prediction = self.module.predict_fn(data, self.model)
        return self.module.output_fn(prediction, accept)


def make_handler(model: LoadedModel, max_body: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "loyaltylens-local/1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet by default
            pass

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._send(HTTPStatus.OK, {"status": "healthy", "model_version": model.model["spec"]["model_version"]})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
                return
            if length > max_body:
                # Drain a moderately large body so the client reads our 413 rather than
                # a reset; beyond that, just close.
                remaining = length if length <= 16 * max_body else 0
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 65536))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                self.close_connection = True
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {max_body} bytes"})
                return
            body = self.rfile.read(length)
            content_type = self.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip() != "application/json":
                self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "content type must be application/json"})
                return
            try:
                payload, out_type = model.invoke(body, content_type, self.headers.get("Accept", "application/json"))
            except model.bad_request as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001 - a failed prediction must not kill the server
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._send(HTTPStatus.OK, payload.encode() if isinstance(payload, str) else payload, out_type)

    return Handler


def serve(archive: Path, host: str, port: int, max_body: int, ready_file: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="ll-serve-") as work:
        model = LoadedModel(archive, Path(work))
        server = LocalHTTPServer((host, port), make_handler(model, max_body))
        if ready_file is not None:
            ready_file.write_text(json.dumps({"host": host, "port": server.server_address[1]}))
        try:
            server.serve_forever()
        finally:
            server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-body", type=int, default=1_048_576)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    try:
        serve(args.archive, args.host, args.port, args.max_body, args.ready_file)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - one line for the parent to show
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
