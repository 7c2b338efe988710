"""Counter stores: how many times each capped offer was handed out, per customer and in total.

A reservation walks one customer's ranked offers and takes up to ``k`` of them, checking
and counting every capped one in the same atomic step, so two processes deciding for the
same customer at the same instant cannot both get an offer capped at one. SQLite does it in
one ``BEGIN IMMEDIATE`` transaction (one writer at a time across every process on the
host); Redis in one Lua script per customer (atomic on the server, shared by many hosts).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from loyaltylens_decision_rules import RulesDeciderSettings

OK = "ok"
NOT_REACHED = ""  # the placement was full before this offer was looked at


class StoreDown(Exception):
    """The counter store cannot be reached or written; the decider applies on_store_error."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One ranked offer as a counter store sees it (0 / -1 mean "no such cap")."""

    offer_id: str
    per_count: int = 0
    per_window_s: float = 0.0
    cap_total: int = 0
    stock: int = -1

    @property
    def capped(self) -> bool:
        return self.per_count > 0 or self.cap_total > 0 or self.stock >= 0


@dataclasses.dataclass(frozen=True)
class Ask:
    """Take up to ``k`` of ``items`` (best first) for ``customer_id`` at ``now`` (epoch s)."""

    customer_id: str
    now: float
    items: tuple[Item, ...]
    k: int


class CounterStore(Protocol):
    def reserve_many(self, asks: Sequence[Ask]) -> list[list[str]]:
        """Per ask, per item: OK (taken and counted), a drop reason, or NOT_REACHED."""

    def close(self) -> None: ...


def open_store(settings: "RulesDeciderSettings", path: Path) -> CounterStore:
    if settings.counter_store == "redis":
        return RedisCounters(settings.redis_url, settings.key_prefix, settings.timeout_s)
    return SQLiteCounters(path, settings.timeout_s)


def walk(ask: Ask, verdict: Any) -> list[str]:
    """The one reservation rule both stores apply: best first, uncapped offers taken
    freely, capped ones only when ``verdict(item)`` (which counts it) says OK."""
    out: list[str] = []
    taken = 0
    for item in ask.items:
        if taken >= ask.k:
            out.append(NOT_REACHED)
            continue
        reason = verdict(item) if item.capped else OK
        out.append(reason)
        taken += reason == OK
    return out


class SQLiteCounters:
    """Counts in one SQLite file (WAL): exact across every process on this host."""

    # Handouts older than any window are deleted as they are passed over.
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS handouts (offer_id TEXT NOT NULL, customer_id TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS handouts_by_pair ON handouts (offer_id, customer_id, at)",
        "CREATE TABLE IF NOT EXISTS totals (offer_id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    )
    # A batch commits this often, so service workers waiting on the lock are not starved.
    COMMIT_EVERY = 256

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None and self._pid == os.getpid():
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in self.SCHEMA:
                db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreDown(f"cannot open counter file {self.path}: {exc}") from exc
        self._db, self._pid = db, os.getpid()
        return db

    def reserve_many(self, asks: Sequence[Ask]) -> list[list[str]]:
        with self._lock:
            try:
                db = self._connection()
                out: list[list[str]] = []
                for start in range(0, len(asks), self.COMMIT_EVERY):
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        for ask in asks[start:start + self.COMMIT_EVERY]:
                            out.append(walk(ask, lambda item, ask=ask: self._take(db, ask, item)))
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise StoreDown(f"counter file {self.path}: {exc}") from exc

    @staticmethod
    def _take(db: sqlite3.Connection, ask: Ask, item: Item) -> str:
        if item.per_count:
            cutoff = ask.now - item.per_window_s
            db.execute("DELETE FROM handouts WHERE offer_id = ? AND customer_id = ? AND at <= ?",
                       (item.offer_id, ask.customer_id, cutoff))
            (held,) = db.execute("SELECT COUNT(*) FROM handouts WHERE offer_id = ? AND customer_id = ?",
                                 (item.offer_id, ask.customer_id)).fetchone()
            if held >= item.per_count:
                return "capped_customer"
        counts_total = item.cap_total > 0 or item.stock >= 0
        if counts_total:
            row = db.execute("SELECT n FROM totals WHERE offer_id = ?", (item.offer_id,)).fetchone()
            total = row[0] if row else 0
            if item.cap_total and total >= item.cap_total:
                return "capped_total"
            if item.stock >= 0 and total >= item.stock:
                return "out_of_stock"
            db.execute("INSERT INTO totals VALUES (?, 1) ON CONFLICT (offer_id) DO UPDATE SET n = n + 1",
                       (item.offer_id,))
        if item.per_count:
            db.execute("INSERT INTO handouts VALUES (?, ?, ?)", (item.offer_id, ask.customer_id, ask.now))
        return OK

    def counts(self, offer_id: str) -> dict[str, int]:
        """Hand-outs of one offer (total, and rows held per customer): for tests and docs."""
        with self._lock:
            db = self._connection()
            row = db.execute("SELECT n FROM totals WHERE offer_id = ?", (offer_id,)).fetchone()
            (held,) = db.execute("SELECT COUNT(*) FROM handouts WHERE offer_id = ?", (offer_id,)).fetchone()
            return {"total": row[0] if row else 0, "held": held}

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None


# One customer's walk on the Redis server, atomically. KEYS: per item, its per-customer
# sorted set and its total counter. ARGV: now, k, a unique member prefix, then per item
# per_count, window seconds, cap_total, stock (0, 0, 0, -1 = uncapped).
RESERVE_LUA = """
local now = tonumber(ARGV[1])
local k = tonumber(ARGV[2])
local member = ARGV[3]
local out = {}
local taken = 0
for i = 1, #KEYS / 2 do
  local base = 3 + (i - 1) * 4
  local per_count = tonumber(ARGV[base + 1])
  local window = tonumber(ARGV[base + 2])
  local cap_total = tonumber(ARGV[base + 3])
  local stock = tonumber(ARGV[base + 4])
  local reason = "ok"
  if taken >= k then
    reason = ""
  elseif per_count > 0 or cap_total > 0 or stock >= 0 then
    local held_key = KEYS[2 * i - 1]
    local total_key = KEYS[2 * i]
    if per_count > 0 then
      redis.call("ZREMRANGEBYSCORE", held_key, "-inf", now - window)
      if redis.call("ZCARD", held_key) >= per_count then reason = "capped_customer" end
    end
    if reason == "ok" and (cap_total > 0 or stock >= 0) then
      local total = tonumber(redis.call("GET", total_key) or "0")
      if cap_total > 0 and total >= cap_total then
        reason = "capped_total"
      elseif stock >= 0 and total >= stock then
        reason = "out_of_stock"
      else
        redis.call("INCR", total_key)
      end
    end
    if reason == "ok" and per_count > 0 then
      redis.call("ZADD", held_key, now, member .. ":" .. i)
      redis.call("EXPIRE", held_key, math.ceil(window) + 60)
    end
  end
  if reason == "ok" then taken = taken + 1 end
  out[i] = reason
end
return out
"""


class RedisCounters:
    """Counts in Redis: per-customer windows as sorted sets (expiring with the window),
    totals as counters, every customer's walk one atomic script."""

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        import redis

        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ResponseError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = prefix
        self._script = self.client.register_script(RESERVE_LUA)

    def _arguments(self, ask: Ask) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        argv: list[Any] = [repr(ask.now), ask.k, uuid.uuid4().hex]
        for item in ask.items:
            keys += [f"{self.prefix}held:{item.offer_id}:{ask.customer_id}", f"{self.prefix}total:{item.offer_id}"]
            argv += [item.per_count, repr(item.per_window_s), item.cap_total, item.stock]
        return keys, argv

    def reserve_many(self, asks: Sequence[Ask]) -> list[list[str]]:
        try:
            if len(asks) == 1:
                keys, argv = self._arguments(asks[0])
                return [self._decoded(self._script(keys=keys, args=argv))]
            pipe = self.client.pipeline(transaction=False)
            for ask in asks:
                keys, argv = self._arguments(ask)
                self._script(keys=keys, args=argv, client=pipe)
            return [self._decoded(r) for r in pipe.execute()]
        except self._errors as exc:
            from loyaltylens_core.kernel.config import mask_urls

            raise StoreDown(mask_urls(f"redis counter store: {exc}")) from exc

    @staticmethod
    def _decoded(reply: Any) -> list[str]:
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    def close(self) -> None:
        self.client.close()
