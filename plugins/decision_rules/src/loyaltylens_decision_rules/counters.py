"""Counter stores: how many times each capped offer was handed out, per customer and in total.

A reservation walks one customer's ranked offers and takes up to ``k`` of them, checking
and counting every capped one in the same atomic step, so two processes deciding for the
same customer at the same instant cannot both get an offer capped at one. SQLite does it in
one ``BEGIN IMMEDIATE`` transaction (one writer at a time across every process on the
host); Redis in one Lua script per customer (atomic on the server, shared by many hosts).
"""

from __future__ import annotations

import collections
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
CAPPED_FREQUENCY = "capped_frequency"  # the customer already had a decision of the campaign group


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
    # A campaign's frequency rule: (group, window seconds, run); see contracts.Frequency.
    frequency: tuple[str, float, str] | None = None


class CounterStore(Protocol):
    def reserve_many(self, asks: Sequence[Ask], commit: bool = True) -> list[list[str]]:
        """Per ask, per item: OK (taken and counted), a drop reason, or NOT_REACHED.
        ``commit=False`` (a dry run) answers the same and counts nothing."""

    async def areserve_many(self, asks: Sequence[Ask], commit: bool = True) -> list[list[str]]:
        """``reserve_many`` for an event loop."""

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

    # Hand-outs older than their offer's window are deleted when the pair gets a new one.
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS handouts (offer_id TEXT NOT NULL, customer_id TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS handouts_by_pair ON handouts (offer_id, customer_id, at)",
        "CREATE INDEX IF NOT EXISTS handouts_by_customer ON handouts (customer_id, offer_id, at)",
        "CREATE TABLE IF NOT EXISTS totals (offer_id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS frequency (grp TEXT NOT NULL, customer_id TEXT NOT NULL, run TEXT NOT NULL, "
        "at REAL NOT NULL, PRIMARY KEY (grp, customer_id, run))",
        "CREATE INDEX IF NOT EXISTS frequency_by_time ON frequency (grp, at)",
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

    async def areserve_many(self, asks: Sequence[Ask], commit: bool = True) -> list[list[str]]:
        """The same transaction, on the caller's thread: a local file answers in well under
        a millisecond, less than a hop to a worker thread would cost."""
        return self.reserve_many(asks, commit)

    def reserve_many(self, asks: Sequence[Ask], commit: bool = True) -> list[list[str]]:
        """A dry run is one transaction rolled back: exact for the asks of one call (they
        see each other's reservations), nothing kept."""
        step = self.COMMIT_EVERY if commit else max(1, len(asks))
        with self._lock:
            try:
                db = self._connection()
                out: list[list[str]] = []
                for start in range(0, len(asks), step):
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        chunk = asks[start:start + step]
                        held = self._frequency_held(db, chunk)
                        out.extend(self._reserve(db, ask, held) for ask in chunk)
                        self._count_frequency(db, chunk, out[start:])
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT" if commit else "ROLLBACK")
                return out
            except sqlite3.Error as exc:
                raise StoreDown(f"counter file {self.path}: {exc}") from exc

    IN_CHUNK = 500  # customers per `IN (...)` lookup (SQLite allows 999 parameters by default)

    def _frequency_held(self, db: sqlite3.Connection, asks: Sequence[Ask]) -> set[tuple[str, str]]:
        """(group, customer) pairs that already had a decision of another run in the window:
        one lookup per few hundred customers rather than one per customer (asks of a batch
        chunk share their group, window, run and instant)."""
        groups: dict[tuple[str, float, str, float], list[str]] = {}
        for ask in asks:
            if ask.frequency is not None:
                groups.setdefault((*ask.frequency, ask.now), []).append(ask.customer_id)
        held: set[tuple[str, str]] = set()
        for (group, window, run, now), customers in groups.items():
            db.execute("DELETE FROM frequency WHERE grp = ? AND at <= ?", (group, now - window))
            for i in range(0, len(customers), self.IN_CHUNK):
                part = customers[i:i + self.IN_CHUNK]
                rows = db.execute(f"SELECT DISTINCT customer_id FROM frequency WHERE grp = ? AND run != ? "
                                  f"AND customer_id IN ({', '.join('?' * len(part))})", (group, run, *part))
                held.update((group, customer) for (customer,) in rows)
        return held

    def _reserve(self, db: sqlite3.Connection, ask: Ask, held: set[tuple[str, str]]) -> list[str]:
        """One customer's walk, inside the caller's transaction, with its frequency rule."""
        if ask.frequency is not None and (ask.frequency[0], ask.customer_id) in held:
            return [CAPPED_FREQUENCY] * len(ask.items)
        if not any(item.per_count for item in ask.items):
            return walk(ask, lambda item: self._take(db, ask, item, {}))
        # The customer's hand-outs in one read, not a count per capped offer: a customer
        # whose favourites are capped passes over the same dozens of offers on every request.
        # Read inside the transaction; the walk adds its own hand-outs as it takes them.
        handouts: dict[str, list[float]] = {}
        for offer_id, at in db.execute("SELECT offer_id, at FROM handouts WHERE customer_id = ?", (ask.customer_id,)):
            handouts.setdefault(offer_id, []).append(at)
        return walk(ask, lambda item: self._take(db, ask, item, handouts))

    @staticmethod
    def _count_frequency(db: sqlite3.Connection, asks: Sequence[Ask], verdicts: Sequence[list[str]]) -> None:
        """A decision of a frequency-ruled campaign that handed something out counts for its group."""
        rows = [(ask.frequency[0], ask.customer_id, ask.frequency[2], ask.now)
                for ask, verdict in zip(asks, verdicts) if ask.frequency is not None and OK in verdict]
        if rows:
            db.executemany("INSERT INTO frequency VALUES (?, ?, ?, ?) ON CONFLICT (grp, customer_id, run) "
                           "DO UPDATE SET at = excluded.at", rows)

    @staticmethod
    def _take(db: sqlite3.Connection, ask: Ask, item: Item, handouts: dict[str, list[float]]) -> str:
        """``handouts``: the customer's hand-out times by offer; only those inside the
        offer's window count."""
        cutoff = ask.now - item.per_window_s
        if item.per_count:
            held = sum(at > cutoff for at in handouts.get(item.offer_id, ()))
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
            # Hand-outs that left the window go as the pair gets a new one: a pair keeps at
            # most per_count rows in its window, plus the ones expired since its last hand-out.
            db.execute("DELETE FROM handouts WHERE offer_id = ? AND customer_id = ? AND at <= ?",
                       (item.offer_id, ask.customer_id, cutoff))
            db.execute("INSERT INTO handouts VALUES (?, ?, ?)", (item.offer_id, ask.customer_id, ask.now))
            handouts.setdefault(item.offer_id, []).append(ask.now)
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


# Many customers' walks in one call, each walk atomic (so is the whole script: Redis runs
# one script at a time). Arguments are few on purpose: the client packs every one of them in
# Python. ARGV: the number of walks, then per walk now, k, a unique member prefix, the
# frequency window in seconds (0: no rule), the frequency run, "1" to count ("0", a dry run,
# checks only, so its answers do not see each other's use of a cap) and the items in rank
# order as one string, ";" between items: "" for an uncapped item, else
# "per_count,window_s,cap_total,stock" (0 / -1 = no such cap). KEYS: per walk, per capped
# item its per-customer sorted set and its total counter, after the customer's frequency
# set of the campaign group when the walk has a frequency rule (one member per run, scored
# by when). The reply: per walk one string, per item "ok", a drop reason or "" (not
# reached), ";" between them, or "frequency": the rule holds the customer back.
RESERVE_LUA = """
-- One walk: its reply and the index of the last key it owns (KEYS[kb + 1] is the next walk's).
local function walk(kb, ab)
  local now = tonumber(ARGV[ab + 1])
  local k = tonumber(ARGV[ab + 2])
  local member = ARGV[ab + 3]
  local freq_window = tonumber(ARGV[ab + 4])
  local freq_run = ARGV[ab + 5]
  local write = ARGV[ab + 6] == "1"
  local freq_key = nil
  if freq_window > 0 then
    kb = kb + 1
    freq_key = KEYS[kb]
    redis.call("ZREMRANGEBYSCORE", freq_key, "-inf", now - freq_window)
    local held = redis.call("ZCARD", freq_key)
    if redis.call("ZSCORE", freq_key, freq_run) then held = held - 1 end
    if held >= 1 then
      local _, capped = string.gsub(ARGV[ab + 7] .. ";", "[^;]+;", "")
      return "frequency", kb + 2 * capped
    end
  end
  local out = {}
  local taken, i = 0, 0
  for spec in string.gmatch(ARGV[ab + 7] .. ";", "([^;]*);") do
    i = i + 1
    local reason = "ok"
    local held_key, total_key = nil, nil
    if spec ~= "" then
      held_key, total_key = KEYS[kb + 1], KEYS[kb + 2]
      kb = kb + 2
    end
    if taken >= k then
      reason = ""
    elseif spec ~= "" then
      local per_count, window, cap_total, stock = string.match(spec, "^([^,]+),([^,]+),([^,]+),([^,]+)$")
      per_count, window = tonumber(per_count), tonumber(window)
      cap_total, stock = tonumber(cap_total), tonumber(stock)
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
        elseif write then
          redis.call("INCR", total_key)
        end
      end
      if reason == "ok" and per_count > 0 and write then
        redis.call("ZADD", held_key, now, member .. ":" .. i)
        redis.call("EXPIRE", held_key, math.ceil(window) + 60)
      end
    end
    if reason == "ok" then taken = taken + 1 end
    out[i] = reason
  end
  if freq_key and taken > 0 and write then
    redis.call("ZADD", freq_key, now, freq_run)
    redis.call("EXPIRE", freq_key, math.ceil(freq_window) + 60)
  end
  return table.concat(out, ";"), kb
end
local replies = {}
local kb = 0
for w = 1, tonumber(ARGV[1]) do
  replies[w], kb = walk(kb, 1 + (w - 1) * 7)
end
return replies
"""


class RedisCounters:
    """Counts in Redis: per-customer windows as sorted sets (expiring with the window),
    totals as counters, every customer's walk atomic inside one script call that may carry
    many walks."""

    # Walks in one script call at most: Redis runs nothing else while a script runs.
    WALKS_PER_CALL = 256

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        import redis

        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ResponseError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = prefix
        self._script = self.client.register_script(RESERVE_LUA)
        self._url, self._timeout_s = url, timeout_s
        # (event loop, client, the loop's walk sender), made on first await.
        self._async: tuple[Any, Any, Coalescer] | None = None

    def _async_sender(self) -> "Coalescer":
        """The walk sender of the running loop (a redis.asyncio client's connections belong
        to the loop that opened them: a new loop gets a new client)."""
        import asyncio

        import redis.asyncio

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(self._url, socket_timeout=self._timeout_s,
                                                  socket_connect_timeout=self._timeout_s)
            script = client.register_script(RESERVE_LUA)

            async def send(walks: Sequence[tuple[Ask, bool]]) -> list[list[str]]:
                keys, argv = self._arguments(walks)
                try:
                    replies = await script(keys=keys, args=argv)
                except self._errors as exc:
                    raise self._down(exc) from exc
                return self._verdicts(walks, replies)

            self._async = (loop, client, Coalescer(send, self.WALKS_PER_CALL))
        return self._async[2]

    async def areserve_many(self, asks: Sequence[Ask], commit: bool = True) -> list[list[str]]:
        """Awaited on the service's loop: the walks of concurrent requests go to Redis
        together (see Coalescer), one script call per round trip instead of one per request."""
        return await self._async_sender()([(a, commit) for a in asks])

    def _arguments(self, walks: Sequence[tuple[Ask, bool]]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one script call over ``walks`` (each an ask and whether it counts)."""
        keys: list[str] = []
        member = uuid.uuid4().hex
        argv: list[Any] = [len(walks)]
        for w, (ask, commit) in enumerate(walks):
            group, window, run = ask.frequency or ("", 0.0, "")
            if ask.frequency is not None:
                keys.append(f"{self.prefix}frequency:{group}:{ask.customer_id}")
            specs = []
            for item in ask.items:
                if item.capped:
                    keys += [f"{self.prefix}held:{item.offer_id}:{ask.customer_id}", f"{self.prefix}total:{item.offer_id}"]
                    specs.append(f"{item.per_count},{item.per_window_s!r},{item.cap_total},{item.stock}")
                else:
                    specs.append("")
            argv += [repr(ask.now), ask.k, f"{member}:{w}", repr(window), run, "1" if commit else "0", ";".join(specs)]
        return keys, argv

    @staticmethod
    def _verdicts(walks: Sequence[tuple[Ask, bool]], replies: Sequence[Any]) -> list[list[str]]:
        """Per walk, per item: the script's one-string replies split."""
        out = []
        for (ask, _), reply in zip(walks, replies):
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            n = len(ask.items)
            out.append([CAPPED_FREQUENCY] * n if text == "frequency" else text.split(";") if n else [])
        return out

    def reserve_many(self, asks: Sequence[Ask], commit: bool = True) -> list[list[str]]:
        walks = [(a, commit) for a in asks]
        chunks = [walks[i:i + self.WALKS_PER_CALL] for i in range(0, len(walks), self.WALKS_PER_CALL)]
        calls = [self._arguments(chunk) for chunk in chunks]
        try:
            if len(calls) == 1:
                replies = [self._script(keys=calls[0][0], args=calls[0][1])]
            else:
                pipe = self.client.pipeline(transaction=False)
                for keys, argv in calls:
                    self._script(keys=keys, args=argv, client=pipe)
                replies = pipe.execute()
        except self._errors as exc:
            raise self._down(exc) from exc
        return [v for chunk, reply in zip(chunks, replies) for v in self._verdicts(chunk, reply)]

    @staticmethod
    def _down(exc: BaseException) -> StoreDown:
        from loyaltylens_core.kernel.config import mask_urls

        return StoreDown(mask_urls(f"redis counter store: {exc}"))

    def close(self) -> None:
        self.client.close()
        made, self._async = self._async, None
        if made is not None and made[0].is_running() and not made[0].is_closed():
            import asyncio

            # The service closes its pipeline from a worker thread while its loop still runs.
            try:
                asyncio.run_coroutine_threadsafe(made[1].aclose(), made[0]).result(self._timeout_s)
            except Exception:  # noqa: BLE001 - a connection that will not close is dropped with the process
                pass


class Coalescer:
    """Walks awaited on one event loop, sent together: while one call is in flight the
    walks that arrive wait for it and then go as the next call, so a busy service worker
    makes one round trip (and pays one client call) per batch of requests, and an idle one
    sends at once. Each walk stays atomic on the server; only the trip is shared."""

    def __init__(self, send: Any, most: int) -> None:
        self.send = send  # async (walks) -> one verdict list per walk
        self.most = most
        self.waiting: collections.deque[tuple[Sequence[tuple[Ask, bool]], Any]] = collections.deque()
        self._drainer: Any = None  # the drain task (held: the loop keeps only a weak reference)

    async def __call__(self, walks: Sequence[tuple[Ask, bool]]) -> list[list[str]]:
        import asyncio

        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self.waiting.append((walks, answer))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        result: list[list[str]] = await answer
        return result

    async def _drain(self) -> None:
        while self.waiting:
            batch: list[tuple[Sequence[tuple[Ask, bool]], Any]] = []
            count = 0
            while self.waiting and (not batch or count + len(self.waiting[0][0]) <= self.most):
                batch.append(self.waiting.popleft())
                count += len(batch[-1][0])
            try:
                verdicts = await self.send([w for walks, _ in batch for w in walks])
            except Exception as exc:  # noqa: BLE001 - each waiter gets the failure as its own
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(StoreDown(str(exc)) if isinstance(exc, StoreDown) else exc)
                continue
            at = 0
            for walks, answer in batch:
                if not answer.done():  # a cancelled request: its walk was counted all the same
                    answer.set_result(verdicts[at:at + len(walks)])
                at += len(walks)
