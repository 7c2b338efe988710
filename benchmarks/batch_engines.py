"""The same batch on each engine: `loyaltylens batch --all` with `local` and with `ray`.

Prints wall time (process start, Ray start-up and actor warm-up included) and the rate the
summary reports, for the demo customers on the embedded defaults. On this 2-core machine
Ray cannot beat one process (it adds serialisation and actors compete for the same cores);
the number says what the engine costs, and the identical output is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "20000"))


def cli(env: dict[str, str], *args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-1000:])
    return time.perf_counter() - start, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ll-bench-engines-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    env.update({"LOYALTYLENS_DATA_DIR": str(work / "data"), "LOYALTYLENS_DEMO_CUSTOMERS": str(CUSTOMERS)})
    cli(env, "run", "C001", "--json")  # build data, model and index once
    results = {}
    for engine in ("local", "ray"):
        out = work / f"{engine}.parquet"
        wall, summary = cli(env, "--use", f"batch_engine={engine}", "batch", "--all", "--out", str(out), "--json")
        results[engine] = (wall, summary)
        print(f"{engine:5}: {summary['customers']:,} customers, wall {wall:.1f} s (process and engine start-up "
              f"included), {summary['customers_per_second']:,.0f}/s inside the batch, workers {summary['workers']}")
    same = pq.read_table(work / "local.parquet").equals(pq.read_table(work / "ray.parquet"))
    print(f"identical output: {same}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
