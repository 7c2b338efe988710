"""The uvicorn HTTP protocol `loyaltylens serve` runs: the header time-out of
``util.uvicorn_http`` with its value from the serve options."""

from __future__ import annotations

from loyaltylens_core.util.uvicorn_http import HEADER_TIMEOUT_S, HeaderTimeoutProtocol


class ServeHeaderTimeoutProtocol(HeaderTimeoutProtocol):
    """The service's protocol, named by import string so uvicorn can hand it to worker
    processes (a class made at run time cannot be pickled): its time-out comes from the
    options `loyaltylens serve` passes its workers."""

    def timeout_s(self) -> float:
        return _serve_header_timeout()


def _serve_header_timeout() -> float:
    global _SERVE_TIMEOUT
    if _SERVE_TIMEOUT is None:
        from loyaltylens_core.service.settings import ServeOptions

        _SERVE_TIMEOUT = float(ServeOptions.from_env().settings.get("header_timeout_s", HEADER_TIMEOUT_S))
    return _SERVE_TIMEOUT


_SERVE_TIMEOUT: float | None = None
