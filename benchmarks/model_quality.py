"""Propensity quality on the demo: the torch model vs the LightGBM baseline vs the oracle.

For three seeds (fresh demo data each): `loyaltylens train --json` with each model, reading
AUC, Brier score and ECE on the held-out latest window, the oracle's AUC and Brier on the same
examples, and the wall time of training; then in-process scoring time for 1 row (median of
200) and 100,000 rows. Prints mean and spread (min-max) over the seeds.

Targets (issue "Propensity quality"): the default model's AUC within 0.02 of the oracle's and
ECE <= 0.02 after calibration.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEEDS = (1, 2, 3)
MODELS = ("torch", "lightgbm")


def train(env: dict[str, str], model: str) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "--use", f"propensity={model}",
                           "train", "--json"], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-1500:])
    return json.loads(proc.stdout), time.perf_counter() - start


PREDICT = r"""
import json, statistics, sys, time
from loyaltylens_core.kernel.pipeline import Pipeline
p = Pipeline.from_config(needed=("feature_store", "propensity"), use=[f"propensity={sys.argv[1]}"])
model = p.component("propensity")
store = p.component("feature_store")
features = store.read_many(store.customer_ids())
one = []
for f in features[:200]:
    memo = getattr(model, "_memo", None)
    if memo is not None:
        memo.clear()
    s = time.perf_counter(); model.predict(f); one.append((time.perf_counter() - s) * 1000)
many = (features * (100000 // len(features) + 1))[:100000]
memo = getattr(model, "_memo", None)
if memo is not None:
    memo.clear()
s = time.perf_counter(); model.predict_many(many); t = time.perf_counter() - s
print(json.dumps({"one_ms": statistics.median(one), "many_s": t}))
"""


def main() -> int:
    results: dict[str, list[dict]] = {m: [] for m in MODELS}
    work = Path(tempfile.mkdtemp(prefix="ll-bench-quality-"))
    try:
        for seed in SEEDS:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
            env.update({"LOYALTYLENS_DATA_DIR": str(work / f"seed{seed}"), "LOYALTYLENS_SEED": str(seed)})
            for model in MODELS:
                card, seconds = train(env, model)
                predict = subprocess.run([sys.executable, "-c", PREDICT, model], env=env, capture_output=True, text=True)
                if predict.returncode:
                    raise SystemExit(predict.stderr[-1500:])
                row = {**{k: card[k] for k in ("auc", "brier", "ece", "oracle_auc", "oracle_brier")},
                       "train_s": seconds, **json.loads(predict.stdout), "calibration": card["calibration"]["method"]}
                results[model].append(row)
                print(f"seed {seed} {model:8}: " + ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stat(model: str, key: str) -> str:
        values = [r[key] for r in results[model]]
        return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    print("\n| model | AUC | Brier | ECE | train s (wall) | predict 1 row ms | predict 100k rows s |")
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        print(f"| {model} | {stat(model, 'auc')} | {stat(model, 'brier')} | {stat(model, 'ece')} | "
              f"{stat(model, 'train_s')} | {stat(model, 'one_ms')} | {stat(model, 'many_s')} |")
    print(f"| oracle | {stat('torch', 'oracle_auc')} | {stat('torch', 'oracle_brier')} | - | - | - | - |")
    gap = statistics.mean(r["oracle_auc"] - r["auc"] for r in results["torch"])
    ece = statistics.mean(r["ece"] for r in results["torch"])
    print(f"torch AUC gap to the oracle {gap:.3f} (target <= 0.02): {'OK' if gap <= 0.02 else 'MISSED'}")
    print(f"torch ECE {ece:.3f} (target <= 0.02): {'OK' if ece <= 0.02 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
