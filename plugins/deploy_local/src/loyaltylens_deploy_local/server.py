"""A SageMaker-contract model server: GET /ping, POST /invocations (and, given a directory
of archives, the multi-model contract: ``multi_model.py``).

It extracts the archive safely, imports its code/inference.py and calls model_fn /
input_fn / predict_fn / output_fn exactly as the SageMaker toolkit does. Bad requests
get a 4xx with a JSON error and the server stays up. It runs on uvicorn, like
`loyaltylens serve`: a bad Content-Length gets 400, a body that stalls gets 408 after the
body time-out, and idle keep-alive connections close after 5 s.

    python -m loyaltylens_deploy_local.server --archive model.tar.gz --port 8080
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

from loyaltylens_core.sdk.archive import safe_extract
from loyaltylens_core.sdk.variants import read_variants
from loyaltylens_core.util.asgi import send_json

from .exchange import headers_of, not_http, predict, read_or_answer


class LoadedModel:
    def __init__(self, model_dir: Path) -> None:
        """A model directory as SageMaker extracts an archive: ``code/inference.py`` beside
        the model files."""
        spec = importlib.util.spec_from_file_location(
            f"loyaltylens_inference_{id(self)}", model_dir / "code" / "inference.py"
        )
        if spec is None or spec.loader is None:
            raise RuntimeError(f"{model_dir} has no code/inference.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.module = module
        self.model = module.model_fn(str(model_dir))
        self.bad_request = getattr(module, "BadRequest", ValueError)

    @classmethod
    def from_archive(cls, archive: Path, workdir: Path) -> LoadedModel:
        return cls(safe_extract(archive, workdir / "model"))

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[str, str]:
        data = self.module.input_fn(body, content_type)
        prediction = self.module.predict_fn(data, self.model)
        return self.module.output_fn(prediction, accept)


def make_app(model: LoadedModel, max_body: int, body_timeout_s: float) -> Callable[..., Awaitable[None]]:
    """The SageMaker serving contract as a plain ASGI app: GET /ping, POST /invocations."""
    version = model.model["spec"]["model_version"]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await not_http(scope, receive, send):
            return
        method, path = scope["method"], scope["path"]
        if path == "/ping" and method == "GET":
            await send_json(send, 200, {"status": "healthy", "model_version": version})
            return
        if path != "/invocations" or method != "POST":
            await send_json(send, 404, {"error": f"no route {method} {path}"})
            return
        body = await read_or_answer(scope, receive, send, max_body, body_timeout_s)
        if body is not None:
            await predict(send, model, body, headers_of(scope))

    return app


def serve(archive: Path, host: str, port: int, max_body: int, ready_file: Path | None,
          workdir: Path | None = None, body_timeout_s: float = 10.0, header_timeout_s: float = 10.0,
          max_models: int = 0) -> None:
    """Serve on uvicorn: bounded header size, keep-alive and body read time, a listen
    socket bound before the ready file names its port, graceful stop on SIGTERM.
    ``archive`` is one model.tar.gz, or a directory of them for a multi-model endpoint
    (``max_models`` loaded at once)."""
    import socket

    import uvicorn

    from loyaltylens_core.util.uvicorn_http import with_header_timeout

    parent = workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ll-serve-", dir=parent) as work:
        manifest = read_variants(archive) if archive.is_dir() else None
        if manifest is not None:
            from .variants import Variants, make_variants_app

            app = make_variants_app(Variants(manifest, archive, Path(work), LoadedModel.from_archive),
                                    max_body, body_timeout_s)
        elif archive.is_dir():
            from .multi_model import MultiModelCache, make_multi_model_app

            cache = MultiModelCache(archive, Path(work), max_models or 8, LoadedModel)
            app = make_multi_model_app(cache, max_body, body_timeout_s)
        else:
            app = make_app(LoadedModel.from_archive(archive, Path(work)), max_body, body_timeout_s)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        config = uvicorn.Config(
            app, lifespan="on", log_level="warning", access_log=False,
            timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024, limit_concurrency=256,
            server_header=False, http=with_header_timeout(header_timeout_s),
        )
        if ready_file is not None:
            ready_file.write_text(json.dumps({"host": host, "port": sock.getsockname()[1]}))
        uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True, type=Path,
                        help="A model.tar.gz, or a directory of them (a multi-model endpoint)")
    parser.add_argument("--max-models", type=int, default=8, help="Multi-model: models loaded at once (LRU)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-body", type=int, default=1_048_576)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--workdir", type=Path, help="Where the archive is extracted (default: the temp dir)")
    parser.add_argument("--body-timeout", type=float, default=10.0, help="Seconds to receive a request body")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="Seconds to receive request headers")
    args = parser.parse_args(argv)
    try:
        serve(args.archive, args.host, args.port, args.max_body, args.ready_file, args.workdir, args.body_timeout,
              args.header_timeout, args.max_models)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - one line for the parent to show
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
