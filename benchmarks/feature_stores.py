"""Every feature store in one run on the demo data (5,000 customers x 4 snapshots), issue 32:

- open: building the store and loading what it serves from (a process's start-up cost);
- `read_latest` p50/p99 of random customers, each first seen by the store, and a
  point-in-time read (`as_of` between snapshots);
- `read_many` of 1,000 customers;
- the training set for a 30-day horizon (15,000 labelled snapshots).

Stores: duckdb (embedded, the offline store), redis (materialised from duckdb; a real
redis-server on 127.0.0.1), feast (a repo from `features export --to feast`, `feast apply`
and `feast materialize`: Redis online store, file offline store), delta on local disk and
delta on S3 (moto in server mode on 127.0.0.1: the S3 protocol without the network's
latency, so remote numbers here are a floor).
Each store runs in its own process, as a user's would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READS = 2_000
MEASURE = r"""
import datetime as dt, json, random, statistics, sys, time
from loyaltylens_core.kernel.pipeline import Pipeline

def pct(values, q):
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]

started = time.perf_counter()
with Pipeline.from_config(None, use=[f"feature_store={sys.argv[1]}"], needed=("feature_store",)) as pipeline:
    store = pipeline.component("feature_store")
    opened = time.perf_counter() - started
    ids = [f"C{i:03d}" for i in range(1, 5001)]  # the demo's ids (Feast cannot list its entities)
    picks = random.Random(7).sample(ids, min(int(sys.argv[2]), len(ids)))
    single, past = [], []
    for customer_id in picks:
        t = time.perf_counter(); store.read_latest(customer_id); single.append((time.perf_counter() - t) * 1000)
    day = dt.date(2026, 5, 15)
    for customer_id in picks[:200]:
        t = time.perf_counter(); store.read_latest(customer_id, as_of=day); past.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    for start in range(0, 5):
        store.read_many(ids[start * 1000:(start + 1) * 1000])
    many = (time.perf_counter() - t) / 5 * 1000
    t = time.perf_counter(); training = store.training_examples(30); build = time.perf_counter() - t
print(json.dumps({"open_s": opened, "p50": statistics.median(single), "p99": pct(single, 0.99),
                  "past_p50": statistics.median(past), "many_ms": many, "training_s": build,
                  "examples": len(training.labels)}))
"""


def measure(store: str, env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", MEASURE, store, str(READS)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{store}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def main() -> None:
    import boto3

    from loyaltylens_core.sdk.standins import redis_server, s3_server

    with tempfile.TemporaryDirectory() as work, redis_server() as redis, s3_server() as s3_url:
        base = {"LOYALTYLENS_DATA_DIR": str(Path(work) / "data"), "REDIS_URL": redis.url}
        cli("seed", env=base)
        s3 = {"AWS_ENDPOINT_URL": s3_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
              "AWS_SECRET_ACCESS_KEY": "bench"}
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket="lake")
        local_table = str(Path(work) / "lake" / "customer_features")
        s3_table = "s3://lake/customer_features"
        timings = {}
        for name, table, extra in (("delta, local", local_table, {}), ("delta, S3 (moto)", s3_table, s3)):
            t = time.perf_counter()
            cli("features", "export", "--to", "delta", table, env={**base, **extra})
            timings[name] = time.perf_counter() - t
        cli("features", "materialize", "--to", "redis", env=base)
        repo = Path(work) / "feast"
        t = time.perf_counter()
        summary = json.loads(cli("features", "export", "--to", "feast", str(repo), "--json", env=base))
        feast = str(Path(sys.executable).with_name("feast"))
        subprocess.run([feast, "apply"], cwd=repo, check=True, capture_output=True)
        subprocess.run([feast, "materialize", *summary["next"].split("feast materialize ")[1].split()], cwd=repo,
                       check=True, capture_output=True)
        timings["feast (export, apply, materialize)"] = time.perf_counter() - t
        cases = {
            "duckdb": ("duckdb", base),
            "redis": ("redis", base),
            "feast (Redis)": ("feast", {**base, "LOYALTYLENS_FEATURE_STORE_FEAST__REPO_PATH": str(repo)}),
            "delta (local)": ("delta", {**base, "LOYALTYLENS_FEATURE_STORE_DELTA__PATH": local_table}),
            "delta (S3, moto)": ("delta", {**base, **s3, "LOYALTYLENS_FEATURE_STORE_DELTA__PATH": s3_table}),
        }
        results = {name: measure(store, env) for name, (store, env) in cases.items()}
    print(f"feature stores, demo data (5,000 customers x 4 snapshots), {READS:,} first-seen reads each\n")
    print(f"{'store':18s} {'open s':>7s} {'read p50 ms':>12s} {'p99 ms':>8s} {'as_of p50 ms':>13s} "
          f"{'read_many(1k) ms':>17s} {'training set s':>15s}")
    for name, r in results.items():
        print(f"{name:18s} {r['open_s']:7.2f} {r['p50']:12.4f} {r['p99']:8.4f} {r['past_p50']:13.4f} "
              f"{r['many_ms']:17.2f} {r['training_s']:15.2f}   ({r['examples']:,} examples)")
    for name, seconds in timings.items():
        print(f"features export --to {name}: {seconds:.1f} s (20,000 rows + 15,000 labels, CLI processes)")


if __name__ == "__main__":
    main()
