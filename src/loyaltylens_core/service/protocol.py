"""The uvicorn HTTP protocol `loyaltylens serve` runs: the header time-out and head
limits of ``util.uvicorn_http`` with their values from the serve options."""

from __future__ import annotations

import functools
from typing import Any

from loyaltylens_core.util.uvicorn_http import (
    HEADER_TIMEOUT_S, MAX_HEADER_BYTES, MAX_HEADERS, HeaderTimeoutProtocol,
)


class ServeHeaderTimeoutProtocol(HeaderTimeoutProtocol):
    """The service's protocol, named by import string so uvicorn can hand it to worker
    processes (a class made at run time cannot be pickled): its limits come from the
    options `loyaltylens serve` passes its workers."""

    def timeout_s(self) -> float:
        return float(_serve_settings().get("header_timeout_s", HEADER_TIMEOUT_S))

    def header_limits(self) -> tuple[int, int]:
        settings = _serve_settings()
        return (int(settings.get("max_header_bytes", MAX_HEADER_BYTES)),
                int(settings.get("max_headers", MAX_HEADERS)))


@functools.cache
def _serve_settings() -> dict[str, Any]:
    from loyaltylens_core.service.settings import ServeOptions

    return ServeOptions.from_env().settings
