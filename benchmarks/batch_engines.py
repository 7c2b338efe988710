"""The same batch on each engine: `loyaltylens batch --all` with `local` and with `ray`.

BENCH_CUSTOMERS customers (default 1,000,000; issue 16): the demo's latest feature snapshot
(5,000 customers) repeated with distinct ids, written straight into a DuckDB feature store,
scored by the model and index built on the demo data. Prints, per engine: wall time (process
start, Ray start-up and actor warm-up included), the rate the summary reports, the peak RSS of
the driver and of everything it started (Ray's processes). Target on this 2-core machine: Ray at
least 50% of the local engine's rate, driver peak RSS at most 2 GiB; the outputs must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "1000000"))
REPEAT_SQL = """
CREATE TABLE features AS
SELECT 'C' || lpad((copy * {demo} + row_number() OVER (PARTITION BY copy ORDER BY customer_id))::VARCHAR, 8, '0')
           AS customer_id,
       recency_days, frequency_30d, monetary_90d, offer_redemption_rate, channel_preference,
       engagement_score, tier, as_of, feature_version
FROM demo.features, range(0, {copies}) t(copy)
WHERE as_of = (SELECT max(as_of) FROM demo.features)
QUALIFY copy * {demo} + row_number() OVER (PARTITION BY copy ORDER BY customer_id) <= {customers}
"""


def many_customers(data_dir: Path, target: Path) -> None:
    import duckdb

    con = duckdb.connect(str(target))
    con.execute(f"ATTACH '{data_dir / 'loyaltylens.duckdb'}' AS demo (READ_ONLY)")
    demo = con.execute("SELECT count(*) FROM demo.features WHERE as_of = (SELECT max(as_of) FROM demo.features)"
                       ).fetchone()[0]
    copies = -(-CUSTOMERS // demo)
    con.execute(REPEAT_SQL.format(demo=demo, copies=copies, customers=CUSTOMERS))
    con.execute("CREATE TABLE feature_meta AS SELECT * FROM demo.feature_meta")
    con.close()


class PeakRSS:
    """Peak RSS of a process and, separately, of all its descendants summed (sampled)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.driver = self.others = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.driver = max(self.driver, self.process.memory_info().rss)
                total = 0
                for child in self.process.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.others = max(self.others, total)
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def batch(env: dict[str, str], engine: str, out: Path) -> tuple[float, dict, PeakRSS]:
    return measured(["--use", f"batch_engine={engine}", "batch", "--all", "--out", str(out), "--json"], env)


def measured(args: list[str], env: dict[str, str]) -> tuple[float, dict, PeakRSS]:
    """One `loyaltylens -q ARGS` printing JSON: wall time, its JSON, its peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "loyaltylens_core.cli", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = PeakRSS(proc.pid)
    stdout, stderr = proc.communicate()
    peak.stop()
    if proc.returncode:
        raise SystemExit(stderr[-1500:])
    return time.perf_counter() - start, json.loads(stdout), peak


def many_customers_setup(prefix: str) -> tuple[Path, dict[str, str]]:
    """A temp dir with the demo built (data, model, index) and CUSTOMERS customers in a
    feature store of their own, and the environment that points loyaltylens at them."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    env["LOYALTYLENS_DATA_DIR"] = str(work / "data")
    subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "run", "C001"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # demo data, model and index, once
    many_customers(work / "data", work / "many.duckdb")
    env["LOYALTYLENS_FEATURE_STORE_DUCKDB__PATH"] = str(work / "many.duckdb")
    return work, env


def main() -> int:
    work, env = many_customers_setup("ll-bench-engines-")
    print(f"{CUSTOMERS:,} customers (the demo's latest snapshot repeated with distinct ids), 2 cores")
    rates = {}
    for engine in ("local", "ray"):
        wall, summary, peak = batch(env, engine, work / f"{engine}.parquet")
        rates[engine] = summary["customers"] / wall
        print(f"{engine:5}: {summary['customers']:,} customers in {wall:.1f} s wall = {rates[engine]:,.0f}/s "
              f"({summary['customers_per_second']:,.0f}/s inside the batch), workers {summary['workers']}; "
              f"peak RSS driver {peak.driver / 2**20:,.0f} MiB, processes it started {peak.others / 2**20:,.0f} MiB")
    same = pq.read_table(work / "local.parquet").equals(pq.read_table(work / "ray.parquet"))
    ratio = rates["ray"] / rates["local"]
    print(f"identical output: {same}; ray / local = {ratio:.0%} (target 50%)  {'OK' if ratio >= 0.5 else 'MISSED'}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0 if same and ratio >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
