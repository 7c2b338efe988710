"""The service's settings: the ``[serve]`` table of loyaltylens.toml, overridden by flags."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


OPTIONS_ENV = "LOYALTYLENS_SERVE_OPTIONS"


@dataclasses.dataclass
class ServeOptions:
    """What a worker needs to build its app; passed from ``serve`` as JSON in the env."""

    config: str | None = None
    use: list[str] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> "ServeOptions":
        raw = os.environ.get(OPTIONS_ENV)
        return cls(**json.loads(raw)) if raw else cls()


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean otherwise")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Worker processes (each holds the model and index)")
    threads: int = Field(8, ge=1, le=256, description="Pipeline threads per worker")
    blas_threads: int = Field(
        1, ge=1, le=256,
        description="BLAS/OpenMP threads per worker: a request's numpy work is tiny, and workers x threads "
                    "above the cores makes them fight (threadpoolctl)")
    api_keys_file: Path | None = Field(None, description="One `name:key` a line; also $LOYALTYLENS_API_KEYS")
    batch_limit: int = Field(1000, ge=1, le=100_000, description="Most customer ids in one POST /v1/offers")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30, description="Larger bodies get 413")
    body_timeout_s: float = Field(10.0, gt=0, le=600, description="A body not received in this time gets 408")
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="Request headers not received in this time get 408")
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1 << 24,
                                  description="A request head (request line and headers) over this many bytes gets 431")
    max_headers: int = Field(100, ge=8, le=10_000, description="A request with more header fields than this gets 431")
    keep_alive_s: float = Field(5.0, gt=0, le=600, description="Idle keep-alive connections close after this")
    limit_concurrency: int = Field(1024, ge=1, description="Connections per worker before 503")
    llm_rate_per_s: float = Field(
        10.0, gt=0, description="Per API key: sustained requests/s that call an LLM generator (all workers)"
    )
    llm_burst: int = Field(20, ge=1, description="Per API key: LLM requests allowed at once before the rate applies")
    audit_max_bytes: int = Field(50 * 1024 * 1024, ge=4096, description="Audit log size before it rotates")
    audit_backups: int = Field(5, ge=0, le=100, description="Rotated audit files kept")
    warmup_runs: int = Field(50, ge=0, le=100_000, description="Runs before /readyz says ready")
    graceful_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM: how long in-flight requests may finish")
