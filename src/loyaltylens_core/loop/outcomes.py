"""Outcomes: what customers did with the offers they were shown.

``loyaltylens feedback import FILE`` and ``POST /v1/feedback`` both end here. A file is
CSV or Parquet with columns ``impression_id, event[, rating][, time]``; every row is
checked column by column (Arrow compute, not a Python loop: a million rows take about a
second), good rows go to the feedback store, and bad rows go to a rejects file with their
line and the reason. The store keeps one row per (impression, event), so importing the
same file twice adds nothing the second time.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from loyaltylens_core.util.atomic import write_bytes
from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.kernel.feedback import EVENTS, outcome_schema

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("impression_id", "event", "rating", "time")
REQUIRED = ("impression_id", "event")
MAX_ID = 128


@dataclasses.dataclass
class ImportSummary:
    rows: int
    added: int
    duplicates: int
    rejected: int
    rejects_file: Path | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rejects_file"] = str(self.rejects_file) if self.rejects_file else None
        out["rows_per_s"] = round(self.rows / self.seconds) if self.seconds > 0 else None
        return out


def as_utc(when: dt.datetime) -> dt.datetime:
    """A time in UTC; one without an offset is taken to be UTC already."""
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def read_file(path: Path) -> tuple["pa.Table", str]:
    """The file's columns as strings, and how rows are named in messages ("line"/"row")."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if path.is_dir() or not path.is_file():
        raise UsageError(f"outcomes file {path} does not exist", "pass a CSV or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
            _check_columns(path, table.column_names)
            return table.cast(pa.schema([(c, pa.string()) for c in table.column_names])), "row"
        if suffix != ".csv":
            raise UsageError(f"outcomes file {path} is neither .csv nor .parquet", "export the outcomes as CSV or Parquet")
        with path.open(newline="", encoding="utf-8-sig") as fh:
            names = next(csv.reader(fh), [])
        _check_columns(path, names)
        table = pcsv.read_csv(
            path,
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=True),
        )
        return table, "line"
    except UsageError:
        raise
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UsageError(f"cannot read outcomes file {path}: {detail}",
                         "write UTF-8 CSV with a header row, or Parquet") from None


def _check_columns(path: Path, names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise UsageError(f"outcomes file {path} has column {unknown[0]!r}, which means nothing here",
                         f"columns are: {', '.join(COLUMNS)} (rating and time optional)")
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise UsageError(f"outcomes file {path} has no {missing[0]!r} column",
                         f"columns are: {', '.join(COLUMNS)} (rating and time optional)")


def validate(raw: "pa.Table", now: dt.datetime) -> tuple["pa.Table", list[tuple[int, str]]]:
    """Good rows as an outcome table, and (row index, reason) for each bad row.

    A missing time is ``now``; a time without an offset is UTC."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = raw.num_rows
    reasons: list[str | None] = [None] * n

    def reject(mask: Any, reason: Any) -> None:
        for i in np.flatnonzero(np.asarray(mask)):
            if reasons[i] is None:
                reasons[i] = reason(i) if callable(reason) else reason

    ids = pc.utf8_trim_whitespace(raw["impression_id"])
    lengths = pc.fill_null(pc.utf8_length(ids), 0).to_numpy(zero_copy_only=False)
    reject(lengths == 0, "impression_id is empty")
    reject(lengths > MAX_ID, f"impression_id is longer than {MAX_ID} characters")

    events = pc.utf8_lower(pc.utf8_trim_whitespace(raw["event"]))
    bad_event = ~pc.fill_null(pc.is_in(events, value_set=pa.array(EVENTS)), False).to_numpy(zero_copy_only=False)
    event_values = events.to_pylist() if bad_event.any() else None
    reject(bad_event, lambda i: f"event {event_values[i]!r} is not one of {', '.join(EVENTS)}" if event_values
           and event_values[i] else f"event is empty (one of {', '.join(EVENTS)})")

    ratings = pa.nulls(n, pa.int8())
    if "rating" in raw.column_names:
        text = pc.utf8_trim_whitespace(raw["rating"])
        given = pc.fill_null(pc.greater(pc.utf8_length(text), 0), False).to_numpy(zero_copy_only=False)
        ok = pc.fill_null(pc.match_substring_regex(text, r"^[1-5](\.0*)?$"), False).to_numpy(zero_copy_only=False)
        shown = text.to_pylist() if (given & ~ok).any() else None
        reject(given & ~ok, lambda i: f"rating {shown[i]!r} is not a whole number from 1 to 5" if shown else "bad rating")
        digits = pc.utf8_slice_codeunits(pc.if_else(pa.array(given & ok), text, None), 0, 1)
        ratings = pc.cast(digits, pa.int8())

    times = pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n)
    if "time" in raw.column_names:
        times, bad_time = _parse_times(raw["time"], now)
        reject(bad_time, lambda i: f"time {raw['time'][i].as_py()!r} is not an ISO 8601 date-time")

    good = np.array([r is None for r in reasons], dtype=bool)
    table = pa.table({"impression_id": ids, "event": events, "rating": ratings, "at": times}, schema=outcome_schema())
    bad = [(int(i), reasons[i] or "") for i in np.flatnonzero(~good)]
    return table.filter(pa.array(good)), bad


def _parse_times(column: Any, now: dt.datetime) -> tuple[Any, Any]:
    """ISO 8601 times: Arrow's cast for the whole column when every value parses (the
    usual case), else row by row so one bad value rejects one row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    target = pa.timestamp("us", tz="UTC")
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    try:
        parsed = pc.cast(text, target)
        return pc.fill_null(parsed, pa.scalar(now, target)), np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values: list[dt.datetime] = []
    bad = np.zeros(len(text), dtype=bool)
    for i, value in enumerate(text.to_pylist()):
        if not value:
            values.append(now)
            continue
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            bad[i] = True
            values.append(now)
            continue
        values.append(as_utc(when))
    return pa.array(values, target), bad


def import_file(store: Any, path: Path, rejects: Path | None = None) -> ImportSummary:
    """Validate ``path`` and add its good rows to ``store``; bad rows and rows whose
    impression the store does not hold go to ``rejects`` (default ``<stem>.rejects.csv``
    beside the file), which is removed when there are none."""
    import pyarrow as pa

    started = time.perf_counter()
    raw, unit = read_file(path)
    good, bad = validate(raw, dt.datetime.now(dt.timezone.utc))
    rejected_rows = {i for i, _ in bad}
    kept_rows = [i for i in range(raw.num_rows) if i not in rejected_rows] if bad else None
    result = store.record_outcomes(good)
    for position in result.get("unknown", []):
        original = kept_rows[position] if kept_rows is not None else position
        bad.append((original, "impression_id names no recorded impression"))
    rejects = rejects or path.with_name(path.stem + ".rejects.csv")
    if bad:
        bad.sort()
        offset = 2 if unit == "line" else 1  # a CSV's header is line 1
        columns = raw.column_names
        rows = raw.take(pa.array([i for i, _ in bad])).to_pylist()
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow([unit, "reason", *columns])
        for (i, reason), row in zip(bad, rows):
            writer.writerow([i + offset, reason, *(row[c] for c in columns)])
        write_bytes(rejects, text.getvalue().encode())
    else:
        rejects.unlink(missing_ok=True)
    return ImportSummary(rows=raw.num_rows, added=int(result["added"]), duplicates=int(result["duplicates"]),
                         rejected=len(bad), rejects_file=rejects if bad else None,
                         seconds=time.perf_counter() - started)


def first_rejects(path: Path, limit: int = 5) -> list[str]:
    """The first rejects, as ``line N: reason``, for the command's output."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        unit = next(reader, ["line"])[0]
        return [f"{unit} {row[0]}: {row[1]}" for row, _ in zip(reader, range(limit))]
