"""First run on a fresh install: demo data, features, training, index, then the offer.

Targets (DESIGN §8, issue 33): the first data dir on a machine under 60 s on 2 cores; a
second data dir (the per-user cache holding the query vocabulary's vectors and the ONNX
export) under 20 s. Each round runs `loyaltylens run C001` on an empty data dir with an
empty per-user cache ("first"), then on another empty data dir with the cache the first
left ("second": what the cache saves; before it, every data dir paid "first"), then a warm
CLI run. Rounds interleave, so machine noise hits both cases alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

FIRST_TARGET_S = 60.0
SECOND_TARGET_S = 20.0
ROUNDS = int(os.environ.get("BENCH_FIRST_RUN_ROUNDS", "2"))


def timed(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "run", "C001", "--json"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    first, second, warm = [], [], []
    for _ in range(ROUNDS):
        # ~1 GB of data dirs and cache per round: each round's go when it ends.
        with tempfile.TemporaryDirectory(prefix="ll-bench-first-run-") as root:
            env = {**base, "LOYALTYLENS_CACHE_DIR": os.path.join(root, "cache"),
                   "LOYALTYLENS_DATA_DIR": os.path.join(root, "first")}
            first.append(timed(env))
            warm.append(timed(env))
            second.append(timed({**env, "LOYALTYLENS_DATA_DIR": os.path.join(root, "second")}))
    one, two = statistics.median(first), statistics.median(second)
    print(f"first data dir, empty per-user cache: {one:.1f} s median of {ROUNDS} ({', '.join(f'{t:.1f}' for t in first)})"
          f"  target {FIRST_TARGET_S:.0f} s  {'OK' if one < FIRST_TARGET_S else 'MISSED'}")
    print(f"second data dir, warm per-user cache: {two:.1f} s median ({', '.join(f'{t:.1f}' for t in second)})"
          f"  target {SECOND_TARGET_S:.0f} s  {'OK' if two < SECOND_TARGET_S else 'MISSED'}  ratio {two / one:.2f} of first")
    print(f"warm CLI run (process start, one offer): {statistics.median(warm):.1f} s median")
    return 0 if one < FIRST_TARGET_S and two < SECOND_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
