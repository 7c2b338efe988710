"""The local engine computes each chunk once, in order, through the real core batch."""

from __future__ import annotations

import pyarrow.parquet as pq

import loyaltylens_batch_local as plugin
from loyaltylens_core.batch import run_batch


def test_computes_every_chunk_in_order_through_the_core_batch(loyaltylens_pipeline, tmp_path):
    pipeline = loyaltylens_pipeline(extra_plugins=[plugin], use=["batch_engine=local"])
    out = tmp_path / "r.parquet"
    summary = run_batch(pipeline, ["C001", "C002", "C003"], out, chunk_size=2)
    assert summary.engine == "local" and summary.workers == 1 and summary.computed == 3
    assert pq.read_table(out).column("customer_id").to_pylist() == ["C001", "C002", "C003"]
