"""Catalogues at production scale: 200 / 5,000 / 50,000 generated offers.

For each size, on a fresh data dir (the query vocabulary's vectors come from a shared,
pre-warmed embedder cache so every size pays for its own offers only):
- cold index (`loyaltylens index`) wall time and peak RSS, then one changed offer re-indexed
  (three edits, median; this 2-core VM varies +-20% run to run);
- a new process mapping the index: prepare() time and RSS;
- retriever latency for vocabulary queries with random tiers and thresholds: first time a
  query is seen in the process (cold pages) and repeated, median and p95, plus how many the
  candidate lists answered, and recall@3 against an exact scan;
- `loyaltylens batch --all` over 50,000 distinct demo customers (BENCH_CUSTOMERS), three runs:
  median customers/s (the job's own rate: chunks computed and written) and peak RSS.

Targets at 50,000 offers (issue "Catalogues at production scale"): cold index <= 120 s,
one changed offer <= 5 s, process index load <= 0.2 s, retriever median <= 1 ms and
p95 <= 2 ms, recall@3 = 1.0, batch >= 10,000 customers/s with peak RSS <= 2 GiB.
Before each cold index the script also measures how fast this machine multiplies bfloat16
on MiniLM's feed-forward shapes right then (`bf16_gflops`): a cold index is bound by that
arithmetic, and a shared VM's rate moves by a third from hour to hour (316 GFLOP/s quiet).
Usage: python benchmarks/catalogue.py [SIZES...]   (default: 200 5000 50000)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "50000"))  # a batch of 5,000 is mostly start-up

WORDS = {
    "brand": "Aurora Beacon Cedar Delta Ember Fjord Garnet Harbor Iris Juniper Kestrel Lumen Maple Nimbus Orchid "
             "Pioneer Quartz Riviera Summit Tundra Umber Vista Willow Zephyr".split(),
    "product": "coffee croissants groceries fuel cinema tickets sneakers headphones skincare pet food wine "
               "pizza sushi flights hotel nights car rental yoga classes books toys garden tools".split(),
    "benefit": "double points|triple points|20% off|a free upgrade|a free item|cashback|early access|"
               "bonus miles|a birthday treat|free delivery".split("|"),
    "when": "this weekend|on weekdays|before noon|after 6pm|this month|on your birthday|on your next visit|"
            "in the app|online|in store".split("|"),
}
CATEGORIES = ("points_multiplier", "free_item", "tier_upgrade", "birthday", "partner", "discount")
TIER_SETS = (("bronze", "silver", "gold", "platinum"), ("silver", "gold", "platinum"), ("gold", "platinum"),
             ("platinum",), ("bronze", "silver"))


MATMUL_PROBE = """
import time, torch
x = torch.randn(64 * 30, 384, dtype=torch.bfloat16)
up, down = torch.nn.Linear(384, 1536).bfloat16(), torch.nn.Linear(1536, 384).bfloat16()
with torch.inference_mode():
    for _ in range(5):
        down(up(x))
    start = time.perf_counter()
    for _ in range(50):
        down(up(x))
print(2 * 2 * 64 * 30 * 384 * 1536 * 50 / (time.perf_counter() - start) / 1e9)
"""


def bf16_gflops() -> float:
    """This machine's bfloat16 matrix-product rate right now (MiniLM's feed-forward shapes)."""
    out = subprocess.run([sys.executable, "-c", MATMUL_PROBE], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def make_catalogue(n: int, seed: int = 7) -> list[dict]:
    """Distinct, readable offers: brand x product x benefit x time, thresholds skewed low."""
    rng = np.random.default_rng(seed)
    offers = []
    for i in range(n):
        brand, product = rng.choice(WORDS["brand"]), rng.choice(WORDS["product"])
        benefit, when = rng.choice(WORDS["benefit"]), rng.choice(WORDS["when"])
        offers.append({
            "offer_id": f"OF{i:06d}",
            "title": f"{brand} {product}: {benefit}",
            "description": f"Get {benefit} on {product} at {brand} {when}. Offer {i}.",
            "category": str(rng.choice(CATEGORIES)),
            "min_propensity_threshold": float(np.round(rng.beta(2, 3), 2)),
            "tiers": list(TIER_SETS[int(rng.integers(len(TIER_SETS)))]),
            "value": float(np.round(rng.uniform(1, 50), 2)),
        })
    return offers


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one CLI command; RSS from wait4 for that child."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "loyaltylens_core.cli", "-q", *args], env=env,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed: {err.read().strip()[-500:]}")
        return seconds, usage.ru_maxrss / 1024, out.read()


PROBE = r"""
import json, sys, time, resource
import numpy as np
t = time.perf_counter()
from loyaltylens_core.kernel.pipeline import Pipeline
from loyaltylens_core.kernel.adapters import query_vocabulary
from loyaltylens_core.kernel.contracts import TIERS, RetrievalQuery
pipeline = Pipeline.from_config(needed=("retriever",), read_only=True)
retriever = pipeline.component("retriever", prepare=False)
t0 = time.perf_counter()
retriever.prepare()
load_s = time.perf_counter() - t0
rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rng = np.random.default_rng(3)
texts = query_vocabulary()
queries = [RetrievalQuery(customer_id="C1", text=texts[int(rng.integers(len(texts)))], k=3,
                          max_threshold=float(np.round(rng.beta(3, 2), 3)), tier=TIERS[int(rng.integers(4))])
           for _ in range(2000)]
def timed(qs):
    out, ms = [], []
    for q in qs:
        s = time.perf_counter(); out.append(retriever.retrieve(q)); ms.append((time.perf_counter() - s) * 1000)
    return out, ms
first, first_ms = timed(queries)
_, repeat_ms = timed(queries)
listed = sum(found is not None for found in retriever._listed_many(queries))
exact = [retriever._exact_many([q])[0] for q in queries[:500]]
recall = np.mean([len({c.offer.offer_id for c in a[:3]} & {c.offer.offer_id for c in b[:3]}) / max(1, min(3, len(b)))
                  for a, b in zip(first, exact)])
print(json.dumps({"load_s": load_s, "rss_mib": rss_after_load, "first_ms": first_ms, "repeat_ms": repeat_ms,
                  "listed": listed / len(queries), "recall_at_3": float(recall)}))
"""


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [200, 5000, 50000]
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    work = Path(tempfile.mkdtemp(prefix="ll-bench-catalogue-"))
    warm_cache = work / "vocabulary-cache.sqlite"
    try:
        # Embed the query vocabulary once into a cache every size starts from.
        env = {**base, "LOYALTYLENS_DATA_DIR": str(work / "warm"),
               "LOYALTYLENS_EMBEDDER_SENTENCE_TRANSFORMERS__CACHE_PATH": str(warm_cache)}
        print("warming the vocabulary cache ...", flush=True)
        run(["index"], env)
        rows = []
        for n in sizes:
            data = work / f"n{n}"
            data.mkdir()
            catalogue = data / "offers.json"
            offers = make_catalogue(n)
            catalogue.write_text(json.dumps(offers))
            cache = data / "cache.sqlite"
            shutil.copy(warm_cache, cache)
            env = {**base, "LOYALTYLENS_DATA_DIR": str(data / "dir"), "LOYALTYLENS_DEMO_CUSTOMERS": str(CUSTOMERS),
                   "LOYALTYLENS_RETRIEVER_DUCKDB__CATALOGUE": str(catalogue),
                   "LOYALTYLENS_EMBEDDER_SENTENCE_TRANSFORMERS__CACHE_PATH": str(cache)}
            run(["seed"], env)  # demo customers + features, so batch has someone to score
            gflops = bf16_gflops()
            cold_s, cold_rss, _ = run(["index", "--json"], env)
            # One edited offer, three times (another offer each time): this 2-core VM's noise is
            # +-20%, so the median of three is reported, with all three.
            edits = []
            for which in (n // 2, n // 3, n // 4):
                offers[which]["description"] += " Now with extra points."
                catalogue.write_text(json.dumps(offers))
                inc_s, inc_rss, inc_out = run(["index", "--json"], env)
                edits.append(inc_s)
            probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
            if probe.returncode:
                raise SystemExit(probe.stderr[-2000:])
            p = json.loads(probe.stdout)
            run(["train"], env)
            rates, batch_rss = [], 0.0
            for attempt in range(3):
                out = data / f"results-{attempt}.parquet"
                _, rss, batch_out = run(["batch", "--all", "--out", str(out), "--json"], env)
                rates.append(json.loads(batch_out)["customers_per_second"])
                batch_rss = max(batch_rss, rss)
            rate = float(np.median(rates))
            row = {
                "offers": n, "bf16_gflops": gflops, "cold_index_s": cold_s, "cold_index_rss_mib": cold_rss,
                "one_changed_s": float(np.median(edits)), "one_changed_all_s": edits,
                "embedded_on_change": json.loads(inc_out).get("embedded"),
                "load_s": p["load_s"], "load_rss_mib": p["rss_mib"],
                "first_median_ms": float(np.median(p["first_ms"])), "first_p95_ms": float(np.percentile(p["first_ms"], 95)),
                "repeat_median_ms": float(np.median(p["repeat_ms"])), "repeat_p95_ms": float(np.percentile(p["repeat_ms"], 95)),
                "from_lists": p["listed"], "recall_at_3": p["recall_at_3"],
                "batch_per_s": rate, "batch_all_per_s": rates, "batch_rss_mib": batch_rss,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        print()
        print("| offers | bf16 GFLOP/s | cold index (RSS) | one changed | process load (RSS) | retrieve first-seen median / p95 "
              "| repeat median / p95 | from lists | recall@3 | batch /s (peak RSS) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['offers']:,} | {r['bf16_gflops']:.0f} | {r['cold_index_s']:.1f} s ({r['cold_index_rss_mib']:.0f} MiB) | "
                  f"{r['one_changed_s']:.1f} s | {r['load_s'] * 1000:.0f} ms ({r['load_rss_mib']:.0f} MiB) | "
                  f"{r['first_median_ms']:.3f} / {r['first_p95_ms']:.3f} ms | "
                  f"{r['repeat_median_ms']:.3f} / {r['repeat_p95_ms']:.3f} ms | {r['from_lists']:.0%} | "
                  f"{r['recall_at_3']:.3f} | {r['batch_per_s']:,.0f} ({r['batch_rss_mib']:.0f} MiB) |")
        last = rows[-1]
        if last["offers"] >= 50000:
            checks = [("cold index <= 120 s", last["cold_index_s"] <= 120),
                      ("one changed offer <= 5 s", last["one_changed_s"] <= 5),
                      ("process load <= 0.2 s", last["load_s"] <= 0.2),
                      ("retriever median <= 1 ms", last["first_median_ms"] <= 1),
                      ("retriever p95 <= 2 ms", last["first_p95_ms"] <= 2),
                      ("recall@3 = 1.0", last["recall_at_3"] >= 0.999),
                      ("batch >= 10,000/s", last["batch_per_s"] >= 10000),
                      ("batch peak RSS <= 2 GiB", last["batch_rss_mib"] <= 2048)]
            for name, ok in checks:
                print(f"{name}: {'OK' if ok else 'MISSED'}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
