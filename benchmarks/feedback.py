"""Closing the loop at scale (issue 18), on the default feedback store (Parquet segments
read with DuckDB) in a temporary directory:

1. import of BENCH_OUTCOMES (default 1,000,000) outcome rows from CSV through
   `loyaltylens_core.loop.outcomes.import_file` (validation, duplicate and unknown-impression
   checks, the write): rows/s (target >= 200,000/s); then the same file again (all
   duplicates: the idempotent path);
2. `report` over as many impressions (the store's join + `build_report`): seconds (target <= 5 s);
3. `loyaltylens monitor --json` over the demo snapshots of the default data dir (the CLI,
   as cron runs it): seconds.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = int(os.environ.get("BENCH_OUTCOMES", "1000000"))


def generated_impressions(n: int):  # type: ignore[no-untyped-def]
    import numpy as np
    import pyarrow as pa

    from loyaltylens_core.kernel.feedback import impression_schema

    rng = np.random.default_rng(7)
    start = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    ids = pa.array([f"imp{i:08d}" for i in range(n)])
    variant = np.where(rng.random(n) < 0.5, "control", "reminder")
    offsets = pa.array(np.arange(0, n + 1, dtype=np.int32))
    variants = pa.MapArray.from_arrays(offsets, pa.array(["demo_reminder"] * n), pa.array(variant))
    return pa.table({
        "impression_id": ids,
        "shown_at": pa.array((np.datetime64(start.replace(tzinfo=None), "us")
                              + rng.integers(0, 30 * 86_400_000_000, n).astype("timedelta64[us]")),
                             pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        "customer_id": pa.array([f"C{i % 200_000:06d}" for i in range(n)]),
        "offer_id": pa.array(np.char.add("OFF", (rng.integers(0, 200, n)).astype(str))),
        "offer_category": pa.array(rng.choice(["cashback", "birthday", "win_back", "tier_upgrade"], n)),
        "tier": pa.array(rng.choice(["bronze", "silver", "gold", "platinum"], n)),
        "channel": pa.array(rng.choice(["in-store", "mobile", "web"], n)),
        "score": pa.array(rng.uniform(0.05, 0.95, n)), "model_version": pa.array(["propensity_v1"] * n),
        "prompt_version": pa.array(["template-v1"] * n), "source": pa.array(["serve"] * n), "variants": variants,
    }, schema=impression_schema())


def write_outcomes_csv(path: Path, impressions, rows: int) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(11)
    n = impressions.num_rows
    pick = rng.choice(n, size=rows, replace=rows > n)
    ids = impressions["impression_id"].take(pa.array(pick))
    events = pa.array(rng.choice(["viewed", "clicked", "redeemed", "dismissed"], rows, p=[0.5, 0.2, 0.2, 0.1]))
    ratings = pa.array(np.where(rng.random(rows) < 0.2, rng.integers(1, 6, rows).astype(str), ""))
    times = pa.array(np.full(rows, "2026-06-01T12:00:00Z"))
    pcsv.write_csv(pa.table({"impression_id": ids, "event": events, "rating": ratings, "time": times}), path)


def main() -> None:
    from loyaltylens_core.loop.outcomes import import_file
    from loyaltylens_core.loop.report import build_report
    from loyaltylens_feedback_duckdb.store import DuckDBFeedbackStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = DuckDBFeedbackStore(root / "feedback")
        t = time.perf_counter()
        impressions = generated_impressions(ROWS)
        store.record_impressions(impressions)
        print(f"setup: {ROWS:,} impressions generated and recorded in {time.perf_counter() - t:.1f} s")
        csv = root / "outcomes.csv"
        write_outcomes_csv(csv, impressions, ROWS)
        print(f"outcomes file: {ROWS:,} rows, {csv.stat().st_size / 1e6:.0f} MB")

        first = import_file(store, csv)
        print(f"import (first time):  {first.rows:,} rows in {first.seconds:.2f} s = {first.rows / first.seconds:,.0f} rows/s "
              f"(added {first.added:,}, repeats in file {first.duplicates:,}, rejected {first.rejected:,}); "
              f"target >= 200,000 rows/s: {'met' if first.rows / first.seconds >= 200_000 else 'MISSED'}")
        again = import_file(store, csv)
        print(f"import (same file again): {again.rows / again.seconds:,.0f} rows/s, added {again.added:,}")

        t = time.perf_counter()
        joined = store.impressions_with_outcomes()
        read_s = time.perf_counter() - t
        report = build_report(joined)
        total_s = time.perf_counter() - t
        print(f"report over {joined.num_rows:,} impressions: {total_s:.2f} s (store join {read_s:.2f} s, "
              f"statistics {total_s - read_s:.2f} s); target <= 5 s: {'met' if total_s <= 5 else 'MISSED'}; "
              f"redemption {report['redemption']['rate']:.3f}")

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "monitor", "--json"],
                          capture_output=True, text=True)
    print(f"monitor over the demo snapshots (CLI, default data dir): {time.perf_counter() - t:.2f} s, exit {proc.returncode}")


if __name__ == "__main__":
    main()
