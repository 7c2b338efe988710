"""Production variants, locally: one endpoint, several models, requests split by weight.

What a SageMaker endpoint with several production variants does: each ``POST /invocations``
goes to a variant drawn with probability weight / total weight (or to the one named by
``X-Amzn-SageMaker-Target-Variant``), and the reply says which answered in
``X-Amzn-Invoked-Production-Variant``. ``POST /variants/weights`` changes the split while
the endpoint serves, as ``UpdateEndpointWeightsAndCapacities`` does: no model is reloaded
and no request is dropped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Awaitable, Callable

from loyaltylens_core.sdk.variants import TARGET_VARIANT_HEADER, VARIANT_HEADER
from loyaltylens_core.util.asgi import send_json

from .exchange import Scorer, headers_of, not_http, predict, read_or_answer


class Variants:
    def __init__(self, manifest: dict[str, Any], package: Path, workdir: Path,
                 load: Callable[[Path, Path], Scorer]) -> None:
        self.models = {name: load(package / entry["archive"], workdir / name)
                       for name, entry in manifest["variants"].items()}
        self.versions = {name: entry.get("model_version") for name, entry in manifest["variants"].items()}
        self.weights = {name: float(entry["weight"]) for name, entry in manifest["variants"].items()}
        self._random = random.Random()

    def pick(self, requested: str | None) -> str:
        if requested is not None:
            if requested not in self.models:
                raise KeyError(requested)
            return requested
        names = list(self.weights)
        return str(self._random.choices(names, weights=[self.weights[n] for n in names])[0])

    def update(self, weights: dict[str, Any]) -> None:
        """New weights for some or all variants; refused whole if any is wrong."""
        new = dict(self.weights)
        for name, weight in weights.items():
            if name not in self.models:
                raise ValueError(f"no variant {name!r} (variants: {', '.join(self.models)})")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"weight of {name!r} must be a number of 0 or more")
            new[name] = float(weight)
        if not sum(new.values()):
            raise ValueError("every variant would have weight 0")
        self.weights = new

    def describe(self) -> dict[str, Any]:
        return {name: {"weight": self.weights[name], "model_version": self.versions[name]} for name in self.models}


def make_variants_app(variants: Variants, max_body: int, body_timeout_s: float) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await not_http(scope, receive, send):
            return
        method, path = scope["method"], scope["path"]
        if path == "/ping" and method == "GET":
            await send_json(send, 200, {"status": "healthy", "variants": variants.describe()})
            return
        if (path, method) not in (("/invocations", "POST"), ("/variants/weights", "POST")):
            await send_json(send, 404, {"error": f"no route {method} {path}"})
            return
        body = await read_or_answer(scope, receive, send, max_body, body_timeout_s)
        if body is None:
            return
        if path == "/variants/weights":
            await _update(send, variants, body)
            return
        headers = headers_of(scope)
        try:
            name = variants.pick(headers.get(TARGET_VARIANT_HEADER.lower()))
        except KeyError as exc:
            await send_json(send, 400, {"error": f"no variant {exc.args[0]!r} (variants: {', '.join(variants.models)})"})
            return
        await predict(send, variants.models[name], body, headers, {VARIANT_HEADER: name})

    return app


async def _update(send: Any, variants: Variants, body: bytes) -> None:
    try:
        weights = json.loads(body or b"{}")
        if not isinstance(weights, dict) or not weights:
            raise ValueError('the body is {"VARIANT": weight, ...}')
        variants.update(weights)
    except ValueError as exc:
        await send_json(send, 400, {"error": str(exc)})
        return
    await send_json(send, 200, {"variants": variants.describe()})
