"""Batch throughput on the embedded defaults.

Target (DESIGN §8): at least 10,000 customers/s on 2 cores. Runs BENCH_ROWS customer rows
(default 100,000: the demo customers repeated until the count is reached) through the
batched stage methods, and compares with looping single runs over a sample.
Two numbers for the batched path: with the query-embedding cache cold (first batch on a
fresh data dir: every distinct customer description is encoded once) and warm.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

TARGET = 10_000
ROWS = int(os.environ.get("BENCH_ROWS", "100000"))
CHUNK = 10_000
LOOP_SAMPLE = 2_000


def main() -> int:
    os.environ.setdefault("LOYALTYLENS_DATA_DIR", tempfile.mkdtemp(prefix="ll-bench-"))
    from loyaltylens_core.kernel.pipeline import Pipeline
    from loyaltylens_core.util.progress import Progress

    pipeline = Pipeline.from_config(progress=Progress(quiet=True))
    pipeline.prepare()
    embedder = pipeline.component("embedder")
    base = pipeline.component("feature_store").customer_ids()
    ids = (base * (ROWS // len(base) + 1))[:ROWS]

    def batched() -> float:
        start = time.perf_counter()
        for i in range(0, len(ids), CHUNK):
            pipeline.run_chunk(ids[i : i + CHUNK])
        return len(ids) / (time.perf_counter() - start)

    getattr(embedder, "_cache", {}).clear()
    db = getattr(embedder, "_db", None)
    saved_db, embedder._db = db, None  # no disk cache either: truly cold
    cold = batched()
    embedder._db = saved_db
    warm = batched()

    start = time.perf_counter()
    for customer_id in base[:LOOP_SAMPLE]:
        pipeline.run(customer_id)
    loop = LOOP_SAMPLE / (time.perf_counter() - start)

    print(f"{len(ids):,} customer rows ({len(base):,} demo customers repeated), chunks of {CHUNK:,}, 2 cores")
    print(f"  batched, embedding cache cold: {cold:10,.0f} customers/s  ratio to target {cold / TARGET:.2f}")
    print(f"  batched, embedding cache warm: {warm:10,.0f} customers/s  ratio to target {warm / TARGET:.2f}")
    print(f"  looping single runs (warm):    {loop:10,.0f} customers/s  batched/loop {warm / loop:.1f}x")
    print(f"  target {TARGET:,}/s: {'OK' if warm >= TARGET else 'MISSED'} (warm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
