"""Online feature store on Redis (``feature_store = "redis"``).

Reads each customer's latest features from one Redis hash; snapshots are materialised
from the offline store (DuckDB by default) with ``loyaltylens features materialize --to
redis`` and switched atomically. Entry-point module: ``redis`` is imported only when the
stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class RedisFeatureSettings(PluginSettings):
    """``[feature_store.redis]`` in loyaltylens.toml, or LOYALTYLENS_FEATURE_STORE_REDIS__<SETTING>."""

    url: str | None = Field(
        None, description="redis://host:6379/0, or rediss:// for TLS; default: $REDIS_URL, else redis://127.0.0.1:6379/0")
    password: SecretStr | None = Field(None, description="Default: $REDIS_PASSWORD (never printed)")
    key_prefix: str = Field(
        "loyaltylens:features", pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
        description="Every key starts with this; several deployments can share one Redis")
    pool_size: int = Field(32, ge=1, le=10_000, description="Connections per process (threads wait for a free one)")
    connect_timeout_s: float = Field(2.0, gt=0, le=60, description="Time-out to open a connection")
    timeout_s: float = Field(1.0, gt=0, le=600, description="Time-out of one command or pipeline round trip")
    tls: bool = Field(False, description="Use TLS (same as a rediss:// URL)")
    tls_ca_file: Path | None = Field(None, description="CA bundle for a server certificate not in the system store")
    ttl_s: int | None = Field(
        None, ge=1, description="Keys of a snapshot expire this long after it was written (none: kept until replaced)")
    retire_after_s: int = Field(
        300, ge=0, description="How long a replaced snapshot stays readable for requests already using it")
    cache_size: int = Field(
        50_000, ge=0, le=10_000_000,
        description="Customers kept in memory per process for repeat reads (0: none); exact, since a snapshot "
                    "never changes once written")
    batch_size: int = Field(5_000, ge=1, le=1_000_000, description="Customers per pipelined round trip")
    offline: str = Field(
        "duckdb", description="Offline feature store: materialised from; answers training and point-in-time reads")
    fallback: str | None = Field(
        None, description='"duckdb": answer from that store while Redis is unreachable (each result says so)')
    retry_after_s: float = Field(5.0, ge=0, description="While falling back, try Redis again after this long")


def build(settings: RedisFeatureSettings, context: StageContext) -> Any:
    from .store import RedisFeatureStore

    return RedisFeatureStore(settings, context)


@hookimpl
def register_feature_stores(register: Register) -> None:
    register("redis", build, settings=RedisFeatureSettings,
             description="Online features in Redis, materialised from the offline store")
