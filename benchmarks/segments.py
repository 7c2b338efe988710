"""Segment models: scoring throughput with segment routing vs one model, and the local
multi-model endpoint's invoke latency, first call and warm, per model.

On fresh demo data: `train` with ``segment_by = "tier"`` (segment models routed whether or
not they beat the global one, so every tier with a model is routed to it). Then, interleaved
over three rounds, `predict_many` of 100,000 rows (the score memo cleared, so every row runs
the forward pass) in a process with segment routing and one with a single model; and one
row's `predict` (median of 500, memo cleared). Then `deploy package --multi-model`,
`deploy up` on the package, and per target model: the first call (which extracts and loads
the archive) and 500 warm calls on one keep-alive connection, p50 / p99.

Targets (issue "Propensity at production shape"): routed scoring >= 90% of one model's rate.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROUNDS = 3
ROWS = 100_000

SCORE = r"""
import json, statistics, sys, time
from loyaltylens_core.kernel.pipeline import Pipeline
p = Pipeline.from_config(needed=("feature_store", "propensity"))
model = p.component("propensity")
store = p.component("feature_store")
features = store.read_many(store.customer_ids())
many = (features * (%(rows)d // len(features) + 1))[:%(rows)d]
one = []
for f in features[:500]:
    model._memo.clear()
    s = time.perf_counter(); model.predict(f); one.append((time.perf_counter() - s) * 1000)
model._memo.clear()
s = time.perf_counter(); scored = model.predict_many(many); t = time.perf_counter() - s
print(json.dumps({"rows_per_s": len(many) / t, "one_ms": statistics.median(one),
                  "segments": sorted({x.segment or "global" for x in scored})}))
"""


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"loyaltylens {' '.join(args)} failed: {proc.stderr[-1500:]}")
    return proc.stdout


def score(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCORE % {"rows": ROWS}], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-1500:])
    return json.loads(proc.stdout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def invoke_latency(url: str, target: str, body: bytes, calls: int = 500) -> dict[str, float]:
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": target}

    def once() -> float:
        start = time.perf_counter()
        connection.request("POST", "/invocations", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{target}: HTTP {response.status}")
        return (time.perf_counter() - start) * 1000

    first = once()
    warm = [once() for _ in range(calls)]
    connection.close()
    return {"first_ms": first, "p50_ms": statistics.median(warm), "p99_ms": percentile(warm, 0.99)}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ll-bench-segments-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    base["LOYALTYLENS_DATA_DIR"] = str(work / "data")
    segmented = {**base, "LOYALTYLENS_PROPENSITY_TORCH__SEGMENT_BY": "tier",
                 "LOYALTYLENS_PROPENSITY_TORCH__SEGMENT_MUST_BEAT_GLOBAL": "false"}
    try:
        started = time.perf_counter()
        card = json.loads(cli(segmented, "train", "--json"))
        print(f"train with segment_by=tier: {time.perf_counter() - started:.1f} s (demo build included)")
        for row in card["segments"]:
            print(f"  {row['segment']}: {row.get('model_version') or 'global'} "
                  + (f"auc {row['auc']:.3f} vs global {row['global_auc']:.3f}" if row.get("auc") else row["reason"]))
        rates: dict[str, list[float]] = {"one model": [], "segment routing": []}
        one_ms: dict[str, list[float]] = {"one model": [], "segment routing": []}
        for round_ in range(ROUNDS):
            for name, env in (("one model", base), ("segment routing", segmented)):
                result = score(env)
                rates[name].append(result["rows_per_s"])
                one_ms[name].append(result["one_ms"])
                print(f"round {round_ + 1} {name:15s}: {result['rows_per_s']:,.0f} rows/s, "
                      f"1 row {result['one_ms']:.3f} ms, scored by {', '.join(result['segments'])}", flush=True)
        print("\n| scoring | predict_many rows/s (median of 3) | predict 1 row ms (median) |")
        print("|---|---|---|")
        for name in rates:
            print(f"| {name} | {statistics.median(rates[name]):,.0f} | {statistics.median(one_ms[name]):.3f} |")
        ratio = statistics.median(rates["segment routing"]) / statistics.median(rates["one model"])
        print(f"segment routing / one model: {ratio:.1%} (target >= 90%): {'OK' if ratio >= 0.9 else 'MISSED'}")

        package = work / "mme"
        cli(segmented, "deploy", "package", "--multi-model", "--out", str(package), "--json")
        up = json.loads(cli(segmented, "deploy", "up", "--archive", str(package), "--json"))
        try:
            body = json.dumps({"recency_days": 12, "frequency_30d": 3, "monetary_90d": 240.0,
                               "offer_redemption_rate": 0.4, "engagement_score": 0.6,
                               "channel_preference": "mobile", "tier": "gold"}).encode()
            print("\n| target model | first call ms (extract + load) | warm p50 ms | warm p99 ms |")
            print("|---|---|---|---|")
            for target in up["target_models"]:
                figures = invoke_latency(up["url"], target, body)
                print(f"| {target} | {figures['first_ms']:.1f} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} |")
        finally:
            cli(segmented, "deploy", "down")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
