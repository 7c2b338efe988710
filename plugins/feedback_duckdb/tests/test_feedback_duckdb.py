"""The DuckDB feedback store on real files: joins, repeats, many writing processes, compaction."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pyarrow as pa
import pytest

from loyaltylens_core.kernel.feedback import impression_schema, outcome_schema
from loyaltylens_feedback_duckdb.store import DuckDBFeedbackStore

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)


def impressions(ids, at=T0, source="run"):
    n = len(ids)
    return pa.table({
        "impression_id": list(ids), "shown_at": [at] * n, "customer_id": [f"C-{i}" for i in ids],
        "offer_id": ["O1"] * n, "offer_category": ["cashback"] * n, "tier": ["gold"] * n, "channel": ["web"] * n,
        "score": [0.5] * n, "model_version": ["m1"] * n, "prompt_version": ["p1"] * n, "source": [source] * n,
        "variants": [[("exp", "b")]] * n,
    }, schema=impression_schema())


def outcomes(rows):
    return pa.table({
        "impression_id": [r[0] for r in rows], "event": [r[1] for r in rows],
        "rating": [r[2] if len(r) > 2 else None for r in rows], "at": [T0 + dt.timedelta(hours=1)] * len(rows),
    }, schema=outcome_schema())


def test_outcomes_join_onto_impressions_with_repeats_and_unknown_ids_reported(tmp_path):
    store = DuckDBFeedbackStore(tmp_path / "fb")
    store.record_impressions(impressions(["a", "b", "c"]))
    result = store.record_outcomes(outcomes([("a", "redeemed", 5), ("a", "viewed"), ("a", "redeemed", 1),
                                             ("zz", "viewed"), ("b", "clicked")]))
    assert result == {"added": 3, "duplicates": 1, "unknown": [3]}
    again = store.record_outcomes(outcomes([("a", "redeemed", 2), ("c", "dismissed")]))
    assert again == {"added": 1, "duplicates": 1, "unknown": []}
    rows = {r["impression_id"]: r for r in store.impressions_with_outcomes().to_pylist()}
    assert (rows["a"]["redeemed"], rows["a"]["viewed"], rows["a"]["rating"]) == (True, True, 5.0)
    assert (rows["b"]["clicked"], rows["b"]["redeemed"], rows["b"]["rating"]) == (True, False, None)
    assert rows["c"]["dismissed"] and rows["a"]["variants"] == [("exp", "b")]
    assert store.counts() == {"impressions": 3, "outcomes": 4}


def test_unchecked_writes_are_deduplicated_when_read(tmp_path):
    store = DuckDBFeedbackStore(tmp_path / "fb")
    store.record_impressions(impressions(["a"]))
    store.record_impressions(impressions(["a"], at=T0 + dt.timedelta(days=1), source="batch"))  # a repeat
    for _ in range(2):
        store.record_outcomes(outcomes([("a", "redeemed", 4), ("ghost", "viewed")]), check=False)
    rows = store.impressions_with_outcomes().to_pylist()
    assert len(rows) == 1 and rows[0]["source"] == "run" and rows[0]["redeemed"]
    assert store.counts()["outcomes"] == 2  # the ghost's row is held, and joins to nothing


def test_since_keeps_later_impressions_only(tmp_path):
    store = DuckDBFeedbackStore(tmp_path / "fb")
    store.record_impressions(impressions(["old"], at=T0))
    store.record_impressions(impressions(["new"], at=T0 + dt.timedelta(days=10)))
    table = store.impressions_with_outcomes(T0 + dt.timedelta(days=5))
    assert table["impression_id"].to_pylist() == ["new"]


def _writer(root: str, worker: int, count: int) -> None:
    store = DuckDBFeedbackStore(Path(root), compact_after=4)
    for i in range(count):
        store.record_impressions(impressions([f"w{worker}-{i}"]))
        store.record_outcomes(outcomes([(f"w{worker}-{i}", "viewed")]), check=False)


def test_many_processes_write_at_once_and_compaction_loses_nothing(tmp_path):
    root = tmp_path / "fb"
    DuckDBFeedbackStore(root)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(root), w, 30)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    store = DuckDBFeedbackStore(root, compact_after=4)
    table = store.impressions_with_outcomes()
    assert table.num_rows == 120 and all(table["viewed"].to_pylist())
    assert len(list((root / "impressions").glob("seg-*.parquet"))) <= 4 + 16  # compaction ran
    store.compact("impressions", everything=True)
    assert len(list((root / "impressions").glob("seg-*.parquet"))) == 1
    assert store.impressions_with_outcomes().num_rows == 120


def test_an_unwritable_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from loyaltylens_core.kernel.errors import StageError

    with pytest.raises(StageError, match="cannot create the feedback store"):
        DuckDBFeedbackStore(blocker / "fb")


def test_rows_written_without_arrow_read_back_like_arrow_segments_and_compact_with_them(tmp_path):
    store = DuckDBFeedbackStore(tmp_path / "fb", compact_after=3)
    arrow_rows = impressions(["a", "b"]).to_pylist()
    store.record_impressions(impressions(["a", "b"]))
    store.record_impression_rows([{**row, "impression_id": "r-" + row["impression_id"]} for row in arrow_rows])
    store.record_impression_rows([{**arrow_rows[0], "impression_id": "r-c", "variants": [], "prompt_version": None}])
    table = store.impressions_with_outcomes()
    by_id = {r["impression_id"]: r for r in table.to_pylist()}
    assert set(by_id) == {"a", "b", "r-a", "r-b", "r-c"}
    for key in ("shown_at", "score", "variants", "tier", "source"):
        assert by_id["r-a"][key] == by_id["a"][key]
    assert by_id["r-c"]["variants"] == [] and by_id["r-c"]["prompt_version"] is None
    store.record_impression_rows([{**arrow_rows[0], "impression_id": "r-d"}])  # 4 segments > 3: compacted
    assert len(list((tmp_path / "fb" / "impressions").glob("seg-*.parquet"))) == 1
    assert store.impressions_with_outcomes().num_rows == 6


def test_a_single_run_records_its_impression_without_importing_pyarrow(tmp_path):
    import subprocess
    import sys

    code = f"""
import sys, datetime as dt
from pathlib import Path
from loyaltylens_feedback_duckdb.store import DuckDBFeedbackStore
store = DuckDBFeedbackStore(Path({str(tmp_path / 'fb')!r}))
store.record_impression_rows([{{"impression_id": "x", "shown_at": dt.datetime.now(dt.timezone.utc), "customer_id": "C1",
    "offer_id": "O1", "offer_category": "c", "tier": "gold", "channel": "web", "score": 0.5, "model_version": "m",
    "prompt_version": "p", "source": "run", "variants": [("e", "b")]}}])
print("pyarrow" in sys.modules, "pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert DuckDBFeedbackStore(tmp_path / "fb").impressions_with_outcomes()["variants"].to_pylist() == [[("e", "b")]]
