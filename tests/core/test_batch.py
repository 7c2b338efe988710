"""Batch runs: exactly one result per customer, whatever point an interruption hits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from loyaltylens_core import batch as batch_module
from loyaltylens_core.batch import read_ids_file, run_batch
from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.sdk.testing import FakeFeatureStore, FakePlugin, make_features

IDS = [f"C{i:03d}" for i in range(1, 101)]


@pytest.fixture
def pipeline(loyaltylens_pipeline):
    store = FakeFeatureStore({c: make_features(c) for c in IDS})
    return loyaltylens_pipeline(fake=FakePlugin(feature_store=store))


def ids_in(path):
    return pq.read_table(path).column("customer_id").to_pylist()


def test_batch_writes_one_row_per_customer_in_order(pipeline, tmp_path):
    out = tmp_path / "r.parquet"
    summary = run_batch(pipeline, IDS, out, chunk_size=7)
    assert ids_in(out) == IDS
    assert summary.computed == 100 and summary.resumed == 0
    row = pq.read_table(out).slice(0, 1).to_pylist()[0]
    assert row["top_offer_id"] == "F1" and row["headline"] and row["fallbacks"] == []
    assert not (tmp_path / "r.parquet.parts").exists()


@pytest.mark.parametrize("fail_after_parts", [0, 1, 5, 14])
def test_interrupted_batch_resumes_without_loss_or_duplicates(pipeline, tmp_path, monkeypatch, fail_after_parts):
    out = tmp_path / "r.parquet"
    real_write = batch_module._write_parquet
    written = []

    def crashing_write(path, rows, *args):
        if len(written) == fail_after_parts:
            raise KeyboardInterrupt("simulated kill")
        real_write(path, rows, *args)
        written.append(path)

    monkeypatch.setattr(batch_module, "_write_parquet", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        run_batch(pipeline, IDS, out, chunk_size=7)
    assert not out.exists()
    monkeypatch.setattr(batch_module, "_write_parquet", real_write)
    summary = run_batch(pipeline, IDS, out, chunk_size=7)
    assert ids_in(out) == IDS
    assert summary.resumed == min(fail_after_parts * 7, 100)


def test_crash_during_merge_is_recovered(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    monkeypatch.setattr(batch_module.shutil, "rmtree", lambda p: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_batch(pipeline, IDS, out, chunk_size=10)
    monkeypatch.undo()
    run_batch(pipeline, IDS, out, chunk_size=10)
    assert ids_in(out) == IDS and not (tmp_path / "r.parquet.parts").exists()


def test_existing_output_and_foreign_parts_need_overwrite(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    run_batch(pipeline, IDS, out)
    with pytest.raises(UsageError, match="already exists"):
        run_batch(pipeline, IDS, out)
    run_batch(pipeline, IDS[:10], out, overwrite=True)
    assert ids_in(out) == IDS[:10]


def test_ids_file_errors(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("C001\n\n# comment\nC002\n")
    assert read_ids_file(path) == ["C001", "C002"]
    path.write_text("C001\nC001\n")
    with pytest.raises(UsageError, match="ids.txt:2: customer 'C001' repeats line 1"):
        read_ids_file(path)
    path.write_text("C001\nbad id\n")
    with pytest.raises(UsageError, match="ids.txt:2: customer id 'bad id' is malformed"):
        read_ids_file(path)
    with pytest.raises(UsageError, match="does not exist"):
        read_ids_file(tmp_path / "none.txt")


KILL_SCRIPT = """
import sys, time
from loyaltylens_core.sdk.testing import FakeFeatureStore, FakePlugin, make_features, ALL_FAKE
from loyaltylens_core.kernel.pipeline import Pipeline
from loyaltylens_core.batch import run_batch
import loyaltylens_core.batch as b
ids = [f"C{i:03d}" for i in range(1, 201)]
real = b._write_parquet
def slow(path, rows, *args):
    real(path, rows, *args)
    time.sleep(0.05)
b._write_parquet = slow
store = FakeFeatureStore({c: make_features(c) for c in ids})
p = Pipeline.from_config(use=ALL_FAKE, extra_plugins=[FakePlugin(feature_store=store)], entry_points=False)
run_batch(p, ids, __import__("pathlib").Path(sys.argv[1]), chunk_size=3)
"""


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.2])
def test_kill_9_at_any_point_then_resume(tmp_path, delay):
    out = tmp_path / "r.parquet"
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "LOYALTYLENS_DATA_DIR": str(tmp_path / "d")}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, str(script), str(out)], env=env, cwd=tmp_path, check=True, timeout=120)
    assert ids_in(out) == [f"C{i:03d}" for i in range(1, 201)]


def test_an_engine_may_write_parts_as_arrow_tables(loyaltylens_pipeline, tmp_path):
    """An engine that receives results as Arrow (Ray) hands them over as tables, in any
    column order; the output is the one the local engine writes."""
    import pyarrow as pa

    class ArrowEngine:
        workers = 1
        parts = 0

        def run(self, job):
            for index, chunk in job.chunks:
                self.parts += 1
                rows = job.pipeline.run_chunk(chunk, rejects={})
                table = pa.Table.from_pylist(rows)
                job.write_part(index, table.select(list(reversed(table.column_names))), {})
                job.advance(len(chunk))

    store = FakeFeatureStore({c: make_features(c) for c in IDS})
    local = loyaltylens_pipeline(fake=FakePlugin(feature_store=store))
    run_batch(local, IDS, tmp_path / "local.parquet", chunk_size=7)
    engine = ArrowEngine()
    arrow = loyaltylens_pipeline(fake=FakePlugin(feature_store=store, batch_engine=engine))
    run_batch(arrow, IDS, tmp_path / "arrow.parquet", chunk_size=7)
    assert engine.parts == 15
    # Each batch names its own impressions; the rest is the same table.
    got, expected = pq.read_table(tmp_path / "arrow.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert got.drop_columns(["impression_id"]).equals(expected.drop_columns(["impression_id"]))
