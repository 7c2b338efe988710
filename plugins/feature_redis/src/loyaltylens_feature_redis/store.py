"""The Redis online store: one hash per customer, under a versioned snapshot prefix.

Keys (``P`` is ``key_prefix``):

    P:current                 id of the snapshot being served (switched with one SET)
    P:snapshots               set of snapshot ids written here, complete or not
    P:snap:<id>:meta          hash: as_of, feature_version, fingerprint, customers, complete
    P:snap:<id>:ids           set of the snapshot's customer ids (``batch --all``)
    P:snap:<id>:c:<customer>  hash: the features that vary by customer

A snapshot id is its date plus the offline store's fingerprint, so materialising the same
snapshot twice finds it complete and writes nothing. A new snapshot is written beside the
one being served and becomes current only once complete: a crash mid-way leaves the old
one serving, and the rerun writes the same keys again. The replaced snapshot expires after
``retire_after_s``, long enough for requests that read the old pointer.

Readers cache the pointer for a second, so a switch reaches every worker within that.
Everything Redis cannot answer (training data, point-in-time reads before the served
snapshot) goes to the offline store, which is also what snapshots are copied from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

from loyaltylens_core.kernel.contracts import CustomerFeatures, SnapshotInfo, TrainingSet
from loyaltylens_core.kernel.errors import ConfigError, ContractViolation, CustomerNotFound, LoyaltyLensError, StageError

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_feature_redis import RedisFeatureSettings

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# Same for every customer of a snapshot, so kept once in its meta hash, not per customer.
PER_SNAPSHOT = ("as_of", "feature_version")
PER_CUSTOMER = tuple(name for name in CustomerFeatures.model_fields if name not in PER_SNAPSHOT and name != "customer_id")
POINTER_TTL_S = 1.0
# KEYS: the customers' hash keys. ARGV: ttl (0: none), the field names and one row of
# string values per key, both as JSON (three arguments per slice, not eight per customer).
WRITE_HASHES = """
local ttl = tonumber(ARGV[1])
local fields = cjson.decode(ARGV[2])
local rows = cjson.decode(ARGV[3])
local pairs_ = {}
for i, key in ipairs(KEYS) do
  local row = rows[i]
  for j = 1, #fields do
    pairs_[2 * j - 1] = fields[j]
    pairs_[2 * j] = row[j]
  end
  redis.call('HSET', key, unpack(pairs_))
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
return #KEYS
"""
SCRIPT_SLICE = 500
FIELDS_JSON = json.dumps(PER_CUSTOMER)
UNREACHABLE = "redis_unreachable"
T = TypeVar("T")


def redacted(url: str) -> str:
    """The URL without user or password: safe for errors and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclasses.dataclass(frozen=True)
class Served:
    """The snapshot the pointer named when last read."""

    sid: str
    as_of: dt.date
    feature_version: str
    customers: int


class RedisFeatureStore:
    def __init__(self, settings: RedisFeatureSettings, context: StageContext) -> None:
        if settings.offline == context.name:
            raise ConfigError(f"[feature_store.{context.name}] offline = {settings.offline!r} names this store itself",
                              'set it to the offline store to copy from, e.g. "duckdb"')
        self.settings = settings
        self.context = context
        self.read_only = bool(context.read_only)
        self.url = settings.url or os.environ.get("REDIS_URL") or DEFAULT_URL
        self.where = redacted(self.url)
        self._password = (settings.password.get_secret_value() if settings.password
                          else os.environ.get("REDIS_PASSWORD")) or urlsplit(self.url).password
        self.client = self._connect()
        self.prefix = settings.key_prefix
        self._write_hashes = self.client.register_script(WRITE_HASHES)
        self.fallback_reason: str | None = None
        self._served: Served | None = None
        self._cache: dict[tuple[str, str], CustomerFeatures] = {}
        self._cache_lock = threading.Lock()
        self._served_at = 0.0
        self._down_until = 0.0

    # --- connection and failures ------------------------------------------------

    def _connect(self) -> redis.Redis:
        url = self.url
        if self.settings.tls and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        options: dict[str, Any] = {
            "max_connections": self.settings.pool_size,
            "timeout": self.settings.connect_timeout_s,  # waiting for a free pooled connection
            "socket_connect_timeout": self.settings.connect_timeout_s,
            "socket_timeout": self.settings.timeout_s,
        }
        if self.settings.password or os.environ.get("REDIS_PASSWORD"):
            options["password"] = self._password
        if url.startswith("rediss://") and self.settings.tls_ca_file:
            options["ssl_ca_certs"] = str(self.settings.tls_ca_file)
        try:
            pool = redis.BlockingConnectionPool.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"Redis URL {self.where!r} is not usable: {self._scrub(str(exc))}",
                              "set [feature_store.redis] url (or $REDIS_URL) to redis://host:port/db "
                              "or rediss://... for TLS") from None
        return redis.Redis(connection_pool=pool)

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _failure(self, exc: Exception) -> LoyaltyLensError:
        reason = self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__).rstrip(".")
        if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in reason or "NOAUTH" in reason:
            return StageError(f"Redis at {self.where} refused the credentials: {reason}",
                              "check $REDIS_PASSWORD or [feature_store.redis] password")
        if isinstance(exc, redis.ResponseError):
            return StageError(f"Redis at {self.where} refused a command: {reason}",
                              "check that it is Redis 6.2 or later, not in cluster mode, and that "
                              "Lua scripts are allowed for this user")
        return StageError(f"cannot reach Redis at {self.where}: {reason}",
                          'start Redis, check [feature_store.redis] url (or $REDIS_URL), or set fallback = "duckdb"')

    def _online(self, call: Callable[[], T], offline: Callable[[Any], T]) -> T:
        """``call()`` against Redis; while Redis is unreachable and a fallback is set, the
        same question to the fallback store (recorded in ``fallback_reason``). A wrong
        password is never papered over: that is a misconfiguration, not an outage."""
        if self._down_until and time.monotonic() < self._down_until:
            return offline(self._fallback_store())
        try:
            result = call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if isinstance(exc, redis.AuthenticationError) or not self.settings.fallback:
                raise self._failure(exc) from None
            self._down_until = time.monotonic() + self.settings.retry_after_s
            self.fallback_reason = UNREACHABLE
            return offline(self._fallback_store())
        except redis.ResponseError as exc:
            raise self._failure(exc) from None
        self._down_until = 0.0
        self.fallback_reason = None
        return result

    def _fallback_store(self) -> Any:
        self.fallback_reason = UNREACHABLE
        return self.context.fallback(self.context.stage, str(self.settings.fallback))

    def _offline_store(self) -> Any:
        return self.context.fallback(self.context.stage, self.settings.offline)

    # --- keys ---------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _customer_key(self, sid: str, customer_id: str) -> str:
        return f"{self.prefix}:snap:{sid}:c:{customer_id}"

    # --- lifecycle ----------------------------------------------------------------

    def prepare(self) -> None:
        """Check Redis answers and serves a snapshot; on a fresh Redis (and a writable
        data dir) copy the offline store's latest snapshot, as the DuckDB store builds its
        features on first use."""
        def check() -> bool:
            self.client.ping()
            return self.client.get(self._key("current")) is not None

        if self._online(check, lambda store: True):
            return
        if self.read_only:
            raise StageError(f"Redis at {self.where} holds no LoyaltyLens features under {self.prefix!r}",
                             "run `loyaltylens features materialize --to redis` first")
        self.load_snapshot()

    def close(self) -> None:
        self.client.connection_pool.disconnect()

    # --- reading --------------------------------------------------------------------

    def _snapshot(self, refresh: bool = False) -> Served:
        """The served snapshot, re-read from Redis at most once a second (or on demand)."""
        now = time.monotonic()
        if self._served is not None and not refresh and now - self._served_at < POINTER_TTL_S:
            return self._served
        sid = self.client.get(self._key("current"))
        if sid is None:
            raise StageError(f"Redis at {self.where} holds no LoyaltyLens features under {self.prefix!r}",
                             "run `loyaltylens features materialize --to redis`")
        sid_text = sid.decode()
        as_of, version, customers = self.client.hmget(self._key("snap", sid_text, "meta"),
                                                      ["as_of", "feature_version", "customers"])
        if as_of is None:
            raise StageError(f"the online snapshot {sid_text} in Redis at {self.where} has expired or was removed",
                             "materialise again: `loyaltylens features materialize --to redis`")
        if self._served is not None and self._served.sid != sid_text:
            with self._cache_lock:
                self._cache.clear()  # entries of the old snapshot are never asked for again
        self._served = Served(sid_text, dt.date.fromisoformat(as_of.decode()), version.decode(), int(customers))
        self._served_at = now
        return self._served

    def _features(self, customer_id: str, values: Sequence[bytes | None], served: Served) -> CustomerFeatures:
        record: dict[str, Any] = dict(zip(PER_CUSTOMER, (v.decode() for v in values if v is not None)))
        return CustomerFeatures(customer_id=customer_id, as_of=served.as_of,
                                feature_version=served.feature_version, **record)

    def _not_found(self, customer_id: str, served: Served) -> CustomerNotFound:
        return CustomerNotFound(f"customer {customer_id!r} not found",
                                f"the online snapshot of {served.as_of} holds {served.customers} customers")

    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures:
        def online() -> CustomerFeatures:
            served = self._snapshot()
            if as_of is not None and as_of < served.as_of:
                return self._offline_store().read_latest(customer_id, as_of)  # type: ignore[no-any-return]
            cached = self._cache.get((served.sid, customer_id))
            if cached is not None:
                return cached
            values = self.client.hmget(self._customer_key(served.sid, customer_id), PER_CUSTOMER)
            if values[0] is None:
                fresh = self._snapshot(refresh=True)  # switched since the pointer was cached?
                if fresh.sid == served.sid:
                    raise self._not_found(customer_id, served)
                served, values = fresh, self.client.hmget(self._customer_key(fresh.sid, customer_id), PER_CUSTOMER)
                if values[0] is None:
                    raise self._not_found(customer_id, served)
            return self._remember(served.sid, self._features(customer_id, values, served))

        return self._online(online, lambda store: store.read_latest(customer_id, as_of))

    def _remember(self, sid: str, features: CustomerFeatures) -> CustomerFeatures:
        """Keep a read for repeat requests. A snapshot never changes once written, so an
        entry keyed by its id cannot go stale; a switch simply stops asking for it."""
        if self.settings.cache_size:
            with self._cache_lock:
                if len(self._cache) >= self.settings.cache_size:
                    del self._cache[next(iter(self._cache))]  # the oldest entry
                self._cache[(sid, features.customer_id)] = features
        return features

    def read_many(self, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
        """One pipelined round trip per ``batch_size`` customers."""
        def online() -> list[CustomerFeatures]:
            served = self._snapshot()
            if as_of is not None and as_of < served.as_of:
                return self._offline_store().read_many(customer_ids, as_of)  # type: ignore[no-any-return]
            out: list[CustomerFeatures] = []
            step = self.settings.batch_size
            for start in range(0, len(customer_ids), step):
                ids = customer_ids[start:start + step]
                pipe = self.client.pipeline(transaction=False)
                for customer_id in ids:
                    pipe.hmget(self._customer_key(served.sid, customer_id), PER_CUSTOMER)
                for customer_id, values in zip(ids, pipe.execute()):
                    if values[0] is None:
                        raise self._not_found(customer_id, served)
                    out.append(self._features(customer_id, values, served))
            return out

        return self._online(online, lambda store: store.read_many(customer_ids, as_of))

    def customer_ids(self) -> list[str]:
        """Every customer of the served snapshot (for ``loyaltylens batch --all``)."""
        def online() -> list[str]:
            ids_key = self._key("snap", self._snapshot().sid, "ids")
            return sorted(member.decode() for member in self.client.sscan_iter(ids_key, count=10_000))

        return self._online(online, lambda store: store.customer_ids())

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        """Training needs history; the offline store has it."""
        return self._offline_store().training_examples(horizon_days)  # type: ignore[no-any-return]

    # --- writing --------------------------------------------------------------------

    def materialize(self, rebuild: bool = False) -> int:
        """What `loyaltylens seed` calls: rebuild the offline store, then copy its latest
        snapshot here. Returns the customers served."""
        offline = self._offline_store()
        if rebuild and hasattr(offline, "materialize"):
            offline.materialize(rebuild=True)
        return int(self.load_snapshot(offline, rebuild=rebuild)["customers"])

    def load_snapshot(self, source: Any = None, as_of: dt.date | None = None, rebuild: bool = False) -> dict[str, Any]:
        """Copy one offline snapshot here in pipelined batches, then switch to it.

        Idempotent: a snapshot already complete here (same date and fingerprint) is not
        written again, only switched to if it is not being served."""
        if self.read_only:
            raise StageError("this process opened the stores read-only and may not write a snapshot",
                             "run `loyaltylens features materialize --to redis` outside the service")
        source = source if source is not None else self._offline_store()
        if not hasattr(source, "snapshot_info") or not hasattr(source, "snapshot_batches"):
            raise ConfigError(f"feature store {type(source).__name__} cannot export whole snapshots",
                              "materialise from a store that can (the default: duckdb)")
        started = time.perf_counter()
        info = SnapshotInfo.model_validate(source.snapshot_info(as_of))
        sid = f"{info.as_of:%Y%m%d}-{info.fingerprint[:12]}"
        try:
            complete = self.client.hget(self._key("snap", sid, "meta"), "complete") == b"1"
            serving = self.client.get(self._key("current"))
            written = 0
            if rebuild or not complete:
                written = self._write(source, info, sid)
            switched = serving != sid.encode()
            if switched:
                self._switch(sid)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise self._failure(exc) from None
        self._served = None
        return {"snapshot": sid, "as_of": str(info.as_of), "customers": info.customers, "written": written,
                "switched": switched, "seconds": round(time.perf_counter() - started, 3)}

    def _write(self, source: Any, info: SnapshotInfo, sid: str) -> int:
        meta_key, ids_key = self._key("snap", sid, "meta"), self._key("snap", sid, "ids")
        ttl = self.settings.ttl_s
        self.client.sadd(self._key("snapshots"), sid)
        self.client.delete(meta_key)  # incomplete until every customer is in
        written = 0
        # One batch in flight while the next is read and packed: Redis runs the script
        # while this process prepares more, instead of each waiting for the other.
        with self.context.progress.task(f"Materialising {info.customers:,} customers to Redis",
                                        total=info.customers) as advance, \
                ThreadPoolExecutor(1, thread_name_prefix="loyaltylens-redis-writer") as writer:
            in_flight: tuple[Future[Any], int] | None = None
            for batch in source.snapshot_batches(info.as_of, self.settings.batch_size):
                pipe = self._batch_pipeline(sid, ids_key, list(batch), info, ttl)
                if in_flight is not None:
                    in_flight[0].result()
                    advance(in_flight[1])
                in_flight = (writer.submit(pipe.execute), len(batch))
                written += len(batch)
            if in_flight is not None:
                in_flight[0].result()
                advance(in_flight[1])
        if written != info.customers:
            raise StageError(f"the offline store gave {written} customers for the snapshot of {info.as_of}, "
                             f"not the {info.customers} it announced (it changed while copying?)",
                             "run the materialisation again; the served snapshot is unchanged")
        self.client.hset(meta_key, mapping={
            "as_of": str(info.as_of), "feature_version": info.feature_version, "fingerprint": info.fingerprint,
            "customers": info.customers, "written_at": dt.datetime.now(dt.timezone.utc).isoformat(), "complete": 1,
        })
        if ttl:
            self.client.expire(meta_key, ttl)
        return written

    def _batch_pipeline(self, sid: str, ids_key: str, batch: Sequence[CustomerFeatures], info: SnapshotInfo,
                        ttl: int | None) -> Any:
        """One pipelined round trip, ready to execute: the customers' hashes written by WRITE_HASHES in slices
        of SCRIPT_SLICE (one command per slice, not one per customer: packing a command
        costs more in redis-py than Redis spends on an HSET), then their ids."""
        for features in batch:
            if features.as_of != info.as_of or features.feature_version != info.feature_version:
                raise ContractViolation(
                    f"the offline store gave {features.customer_id} features of {features.as_of} "
                    f"({features.feature_version}) for the snapshot of {info.as_of} ({info.feature_version})",
                    "fix the offline store's snapshot_batches")
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, len(batch), SCRIPT_SLICE):
            part = batch[start:start + SCRIPT_SLICE]
            keys = [self._customer_key(sid, f.customer_id) for f in part]
            rows = [[str(getattr(f, name)) for name in PER_CUSTOMER] for f in part]
            self._write_hashes(keys=keys, args=[ttl or 0, FIELDS_JSON, json.dumps(rows)], client=pipe)
        if batch:
            pipe.sadd(ids_key, *(f.customer_id for f in batch))
            if ttl:
                pipe.expire(ids_key, ttl)
        return pipe

    def _switch(self, sid: str) -> None:
        """Serve ``sid`` (one SET: readers see the old snapshot or the new, never a mix),
        then let every other snapshot written here expire."""
        self.client.set(self._key("current"), sid)
        for other in self.client.smembers(self._key("snapshots")):
            if other.decode() != sid:
                self._retire(other.decode())

    def _retire(self, sid: str) -> None:
        ids_key = self._key("snap", sid, "ids")
        keep = self.settings.retire_after_s
        pipe = self.client.pipeline(transaction=False)
        for n, member in enumerate(self.client.sscan_iter(ids_key, count=10_000), 1):
            key = self._customer_key(sid, member.decode())
            pipe.expire(key, keep) if keep else pipe.unlink(key)
            if n % 10_000 == 0:
                pipe.execute()
        for key in (ids_key, self._key("snap", sid, "meta")):
            pipe.expire(key, keep) if keep else pipe.unlink(key)
        pipe.srem(self._key("snapshots"), sid)
        pipe.execute()
