"""The SageMaker multi-model endpoint, locally: the container contract and the front of it.

A SageMaker multi-model endpoint serves many model archives under one S3 prefix from one
container. ``InvokeEndpoint(TargetModel="tier=gold.tar.gz")`` makes the platform copy that
archive to the instance, extract it to ``/opt/ml/models/<model_name>/model`` and ask the
container to load it (``POST /models``), then invoke it (``POST /models/<model_name>/invoke``,
with the original ``X-Amzn-SageMaker-Target-Model`` header). The container answers the model
APIs of the custom-container contract:

    POST   /models                 {"model_name", "url"}  load (409 if loaded, 404 if no such url)
    GET    /models                 {"models": [{"modelName", "modelUrl"}], "nextPageToken"?}
    GET    /models/<name>          {"modelName", "modelUrl"}
    DELETE /models/<name>          unload
    POST   /models/<name>/invoke   a prediction (404 naming the model if it is not loaded)

This server is both: the container APIs above, and SageMaker's part on
``POST /invocations`` with ``X-Amzn-SageMaker-Target-Model``: an archive under the model
root is extracted and loaded on its first call, and kept in a least-recently-used set of at
most ``max_models`` (the oldest is unloaded to make room, as SageMaker unloads models when
an instance runs out of memory). A target that names no archive under the root is a 404
naming it.
"""

from __future__ import annotations

import collections
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, Awaitable, Callable

from loyaltylens_core.sdk.archive import safe_extract
from loyaltylens_core.util.asgi import send_json

from .exchange import Scorer, headers_of, not_http, predict, read_or_answer

TARGET_HEADER = "x-amzn-sagemaker-target-model"
PAGE_SIZE = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]")


class ModelNotFound(LookupError):
    pass


class MultiModelCache:
    """Loaded models by name, least recently used first."""

    def __init__(self, model_root: Path, workdir: Path, max_models: int, load: Callable[[Path], Scorer]) -> None:
        self.model_root = model_root.resolve()
        self.workdir = workdir
        self.max_models = max_models
        self._load = load
        self.models: collections.OrderedDict[str, tuple[str, Scorer]] = collections.OrderedDict()
        self.evicted = 0
        self.loads = 0

    def load_url(self, name: str, url: str) -> Scorer:
        """The container's Load Model API: a model directory already extracted."""
        if name in self.models:
            raise FileExistsError(name)
        directory = Path(url)
        if not (directory / "code" / "inference.py").is_file():
            raise ModelNotFound(f"no model at {url} (it needs code/inference.py)")
        return self._add(name, url, self._load(directory))

    def _add(self, name: str, url: str, model: Scorer) -> Scorer:
        while len(self.models) >= self.max_models:
            self.models.popitem(last=False)
            self.evicted += 1
        self.models[name] = (url, model)
        self.loads += 1
        return model

    def get(self, name: str) -> Scorer:
        if name not in self.models:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self.models.move_to_end(name)
        return self.models[name][1]

    def unload(self, name: str) -> None:
        if self.models.pop(name, None) is None:
            raise ModelNotFound(f"model {name!r} is not loaded")

    def for_target(self, target: str) -> Scorer:
        """SageMaker's part: the archive ``target`` under the model root, loaded on first use."""
        name = model_name_of(target)
        if name in self.models:
            return self.get(name)
        archive = (self.model_root / target).resolve()
        if archive.parent != self.model_root and self.model_root not in archive.parents:
            raise ModelNotFound(f"target model {target!r} is outside the endpoint's model prefix")
        if not archive.is_file():
            available = ", ".join(sorted(p.name for p in self.model_root.glob("*.tar.gz"))) or "none"
            raise ModelNotFound(f"target model {target!r} not found under the endpoint's model prefix "
                                f"(available: {available})")
        directory = safe_extract(archive, self.workdir / name / "model")
        return self._add(name, str(directory), self._load(directory))

    def listing(self, token: str | None) -> dict[str, Any]:
        names = list(self.models)
        start = int(token) if token and token.isdigit() else 0
        page = [{"modelName": n, "modelUrl": self.models[n][0]} for n in names[start : start + PAGE_SIZE]]
        out: dict[str, Any] = {"models": page}
        if start + PAGE_SIZE < len(names):
            out["nextPageToken"] = str(start + PAGE_SIZE)
        return out


def model_name_of(target: str) -> str:
    """A filesystem-safe model name for a target ("tier=gold.tar.gz" -> "tier=gold")."""
    stem = target[: -len(".tar.gz")] if target.endswith(".tar.gz") else target
    return _UNSAFE.sub("_", stem) or "_"


def make_multi_model_app(cache: MultiModelCache, max_body: int, body_timeout_s: float) -> Callable[..., Awaitable[None]]:
    """The contract as a plain ASGI app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await not_http(scope, receive, send):
            return
        method, path = scope["method"], scope["path"]
        headers = headers_of(scope)
        if path == "/ping" and method == "GET":
            await send_json(send, 200, {"status": "healthy", "multi_model": True, "loaded": len(cache.models)})
            return
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts == ["models"] and method == "GET":
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
            await send_json(send, 200, cache.listing((query.get("next_page_token") or [None])[0]))
            return
        if len(parts) == 2 and parts[0] == "models" and method in ("GET", "DELETE"):
            await _describe_or_unload(send, cache, parts[1], method)
            return
        loading = parts == ["models"] and method == "POST"
        invoking = (len(parts) == 3 and parts[0] == "models" and parts[2] == "invoke" and method == "POST") \
            or (path == "/invocations" and method == "POST")
        if not (loading or invoking):
            await send_json(send, 404, {"error": f"no route {method} {path}"})
            return
        body = await read_or_answer(scope, receive, send, max_body, body_timeout_s)
        if body is None:
            return
        if loading:
            await _load(send, cache, body)
            return
        target = headers.get(TARGET_HEADER)
        if path == "/invocations" and not target:
            await send_json(send, 400, {"error": "a multi-model endpoint needs a target model",
                                        "hint": f"send the {TARGET_HEADER} header (InvokeEndpoint TargetModel)"})
            return
        try:
            started = time.perf_counter()
            if path == "/invocations":
                assert target is not None
                loaded_before = model_name_of(target) in cache.models
                model = cache.for_target(target)
            else:
                loaded_before, model = True, cache.get(parts[1])
        except ModelNotFound as exc:
            await send_json(send, 404, {"error": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - an archive that fails to load is this request's error
            await send_json(send, 500, {"error": f"loading {target!r} failed: {type(exc).__name__}: {exc}"})
            return
        load_ms = 0.0 if loaded_before else (time.perf_counter() - started) * 1000
        await predict(send, model, body, headers, {"X-LoyaltyLens-Model-Load-Ms": f"{load_ms:.1f}"} if load_ms else None)

    return app


async def _describe_or_unload(send: Any, cache: MultiModelCache, name: str, method: str) -> None:
    if name not in cache.models:
        await send_json(send, 404, {"error": f"model {name!r} is not loaded"})
    elif method == "DELETE":
        cache.unload(name)
        await send_json(send, 200, {"status": "unloaded", "modelName": name})
    else:
        await send_json(send, 200, {"modelName": name, "modelUrl": cache.models[name][0]})


async def _load(send: Any, cache: MultiModelCache, body: bytes) -> None:
    try:
        request = json.loads(body or b"{}")
        name, url = request["model_name"], request["url"]
        if not isinstance(name, str) or not isinstance(url, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        await send_json(send, 400, {"error": 'a load request is {"model_name": str, "url": str}'})
        return
    try:
        cache.load_url(name, url)
    except FileExistsError:
        await send_json(send, 409, {"error": f"model {name!r} is already loaded"})
        return
    except ModelNotFound as exc:
        await send_json(send, 404, {"error": str(exc)})
        return
    except Exception as exc:  # noqa: BLE001 - a model that cannot load is the caller's 500, not ours
        await send_json(send, 500, {"error": f"loading {name!r} failed: {type(exc).__name__}: {exc}"})
        return
    await send_json(send, 200, {"status": "loaded", "modelName": name})
