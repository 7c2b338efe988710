"""Impressions and outcomes as append-only Parquet segments, read with DuckDB.

Why segments and not one DuckDB file: a DuckDB file has one writing process at a time,
and impressions come from every `serve` worker, `run` and `batch` at once. Each write
is a new segment (written beside its name, then renamed: whole or absent), so writers
never wait on each other or on a reader. Reads keep the first row per impression and per
(impression, event), which makes concurrent and repeated writes harmless. When a table
has more than ``compact_after`` segments, the writer that notices merges them into one
under a file lock (other writers skip compaction rather than wait).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import duckdb

from loyaltylens_core.util.atomic import write_parquet, write_with
from loyaltylens_core.kernel.errors import StageError

if TYPE_CHECKING:  # pyarrow loads only on the Arrow paths: a single `run` writes rows with DuckDB
    import pyarrow as pa
from loyaltylens_core.kernel.feedback import EVENTS, IMPRESSION_COLUMNS, impression_schema, joined_schema, outcome_schema

T = TypeVar("T")
MERGED_LIMIT = 16
_DUCKDB_TYPES = {"string": "VARCHAR", "timestamp": "TIMESTAMPTZ", "float64": "DOUBLE", "map": "MAP(VARCHAR, VARCHAR)"}
IMPRESSION_DDL = ", ".join(f'"{name}" {_DUCKDB_TYPES[kind]}' for name, kind in IMPRESSION_COLUMNS)
FIRST_IMPRESSION = "QUALIFY row_number() OVER (PARTITION BY impression_id ORDER BY shown_at, source) = 1"
FIRST_OUTCOME = 'QUALIFY row_number() OVER (PARTITION BY impression_id, event ORDER BY "at", rating) = 1'


class DuckDBFeedbackStore:
    def __init__(self, root: Path, compact_after: int = 64) -> None:
        self.root = Path(root)
        self.compact_after = compact_after
        self.dirs = {"impressions": self.root / "impressions", "outcomes": self.root / "outcomes"}
        try:
            for directory in self.dirs.values():
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StageError(f"cannot create the feedback store in {self.root}: {exc.strerror}",
                             "set [feedback_store.duckdb] path to a writable directory") from None

    # --- writes ---------------------------------------------------------------------

    def record_impressions(self, impressions: "pa.Table") -> None:
        if impressions.num_rows:
            self._append("impressions", impressions.cast(impression_schema()))

    def record_impression_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """The same segment written by DuckDB from plain rows: what a single `run` records,
        without importing pyarrow (see contracts.RecordsImpressionRows)."""
        if not rows:
            return
        columns = [name for name, _ in IMPRESSION_COLUMNS]
        values = ", ".join("map(?::VARCHAR[], ?::VARCHAR[])" if name == "variants" else "?" for name in columns)
        with contextlib.closing(duckdb.connect()) as con:
            con.execute(f"CREATE TABLE segment ({IMPRESSION_DDL})")
            con.executemany(f"INSERT INTO segment VALUES ({values})", [_flat(row, columns) for row in rows])
            self._append_sql("impressions", con, "SELECT * FROM segment")

    def record_outcomes(self, outcomes: "pa.Table", check: bool = True) -> dict[str, Any]:
        import pyarrow as pa

        outcomes = outcomes.cast(outcome_schema())
        if not check or not outcomes.num_rows:
            if outcomes.num_rows:
                self._append("outcomes", outcomes)
            return {"added": outcomes.num_rows, "duplicates": 0, "unknown": []}
        numbered = outcomes.append_column("_row", pa.array(range(outcomes.num_rows), pa.int64()))

        def check_rows(con: duckdb.DuckDBPyConnection) -> "pa.Table":
            con.register("incoming", numbered)
            return con.sql(f"""
                WITH n AS (
                    SELECT _row, impression_id, event,
                           row_number() OVER (PARTITION BY impression_id, event ORDER BY _row) AS nth
                    FROM incoming),
                known AS (SELECT DISTINCT impression_id FROM ({self._table(con, 'impressions')})
                          WHERE impression_id IN (SELECT impression_id FROM incoming)),
                stored AS (SELECT DISTINCT impression_id, event FROM ({self._table(con, 'outcomes')})
                           WHERE impression_id IN (SELECT impression_id FROM incoming))
                SELECT n._row,
                       k.impression_id IS NULL AS unknown,
                       n.nth > 1 OR s.impression_id IS NOT NULL AS duplicate
                FROM n LEFT JOIN known k USING (impression_id)
                       LEFT JOIN stored s ON s.impression_id = n.impression_id AND s.event = n.event
                ORDER BY n._row""").to_arrow_table()

        verdict = self._read(check_rows)
        unknown_mask = verdict["unknown"].to_numpy(zero_copy_only=False)
        duplicate_mask = verdict["duplicate"].to_numpy(zero_copy_only=False) & ~unknown_mask
        keep = ~unknown_mask & ~duplicate_mask
        rows = verdict["_row"].to_numpy()
        if keep.any():
            self._append("outcomes", outcomes.take(pa.array(rows[keep])))
        return {"added": int(keep.sum()), "duplicates": int(duplicate_mask.sum()),
                "unknown": [int(r) for r in rows[unknown_mask]]}

    def _append(self, kind: str, table: "pa.Table") -> None:
        write_parquet(self.dirs[kind] / _segment_name(), table)
        self._compact_if_many(kind)

    def _append_sql(self, kind: str, con: duckdb.DuckDBPyConnection, query: str) -> None:
        _copy_whole(con, query, self.dirs[kind] / _segment_name())
        self._compact_if_many(kind)

    def _compact_if_many(self, kind: str) -> None:
        if len(_segments(self.dirs[kind])) > self.compact_after:
            self.compact(kind)

    def compact(self, kind: str, everything: bool = False) -> int:
        """Merge a table's small segments into one (first row per key kept); returns how
        many segments were merged, 0 when another process holds the lock. Segments already
        merged are merged again only once there are ``MERGED_LIMIT`` of them (or with
        ``everything``), so steady writes do not rewrite the whole table each time."""
        directory = self.dirs[kind]
        with _try_lock(self.root / f".{kind}.compact.lock") as locked:
            if not locked:
                return 0
            segments = _segments(directory)
            merged = [p for p in segments if p.stem.endswith("-merged")]
            chosen = segments if everything or len(merged) >= MERGED_LIMIT else [p for p in segments if p not in merged]
            if len(chosen) < 2:
                return 0
            first = FIRST_IMPRESSION if kind == "impressions" else FIRST_OUTCOME
            # Named after the newest segment it replaces, so names keep sorting by age.
            name = chosen[-1].stem.removesuffix("-merged") + "-merged.parquet"
            with contextlib.closing(duckdb.connect()) as con:  # DuckDB alone: no Arrow, no pandas
                _copy_whole(con, f"{_read_all(chosen)} {first}", directory / name)
            for path in chosen:
                if path.name != name:
                    path.unlink(missing_ok=True)
            return len(chosen)

    # --- reads ----------------------------------------------------------------------

    def impressions_with_outcomes(self, since: dt.datetime | None = None) -> "pa.Table":
        flags = ",\n".join(f"bool_or(event = '{e}') AS {e}" for e in EVENTS)
        outer = ",\n".join(f"coalesce(f.{e}, false) AS {e}" for e in EVENTS)
        where = "WHERE shown_at >= $since" if since is not None else ""
        def read(con: duckdb.DuckDBPyConnection) -> "pa.Table":
            query = f"""
                WITH i AS (SELECT * FROM ({self._table(con, 'impressions')}) {where} {FIRST_IMPRESSION}),
                o AS (SELECT impression_id, event, rating FROM ({self._table(con, 'outcomes')}) {FIRST_OUTCOME}),
                f AS (SELECT impression_id, {flags}, avg(rating) AS rating FROM o GROUP BY impression_id)
                SELECT i.*, {outer}, f.rating
                FROM i LEFT JOIN f USING (impression_id)"""
            return con.sql(query, params={"since": since} if since is not None else None).to_arrow_table()

        return self._read(read).cast(joined_schema())

    def counts(self) -> dict[str, int]:
        """How many impressions and (impression, event) outcomes are held, repeats dropped."""
        def count(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
            impressions, outcomes = self._table(con, "impressions"), self._table(con, "outcomes")
            held_impressions = con.execute(f"SELECT count(DISTINCT impression_id) FROM ({impressions})").fetchall()
            held_outcomes = con.execute(
                f"SELECT count(*) FROM (SELECT DISTINCT impression_id, event FROM ({outcomes}))").fetchall()
            return {"impressions": int(held_impressions[0][0]), "outcomes": int(held_outcomes[0][0])}

        return self._read(count)

    def _table(self, con: duckdb.DuckDBPyConnection, kind: str) -> str:
        """SQL for every segment of a table (an empty relation of its schema when none)."""
        segments = _segments(self.dirs[kind])
        if segments:
            return _read_all(segments)
        empty = f"empty_{kind}"
        con.register(empty, (impression_schema() if kind == "impressions" else outcome_schema()).empty_table())
        return f"SELECT * FROM {empty}"

    def _read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``query`` on a fresh in-memory connection; a read that lost a segment to a
        concurrent compaction is retried (the merged segment holds the same rows)."""
        for attempt in range(3):
            with contextlib.closing(duckdb.connect()) as con:
                try:
                    return query(con)
                except duckdb.IOException:
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Nothing stays open between calls; present so the core closes it like any store."""


def _segment_name() -> str:
    return f"seg-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"


def _flat(row: dict[str, Any], columns: list[str]) -> list[Any]:
    out: list[Any] = []
    for name in columns:
        if name == "variants":
            pairs = list(row[name] or [])
            out += [[k for k, _ in pairs], [v for _, v in pairs]]
        else:
            out.append(row[name])
    return out


def _copy_whole(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    """``query``'s rows as a Parquet file that exists whole or not at all."""
    write_with(path, lambda tmp: con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet)"))


def _read_all(segments: Sequence[Path]) -> str:
    files = ", ".join(f"'{p}'" for p in segments)
    return f"SELECT * FROM read_parquet([{files}])"


def _segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("seg-*.parquet"))



@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
