"""First run on a fresh install: demo data, features, training, index, then the offer.

Target (DESIGN §8): under 60 s on 2 cores. Runs `loyaltylens run C001` on an empty data
dir (the venv already installed) and prints the wall time, then a second, warm CLI run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

TARGET_S = 60.0


def timed(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "run", "C001", "--json"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    env["LOYALTYLENS_DATA_DIR"] = tempfile.mkdtemp(prefix="ll-first-run-")
    first = timed(env)
    warm = timed(env)
    print(f"first run on an empty data dir: {first:.1f} s  target {TARGET_S:.0f} s  ratio {first / TARGET_S:.2f}  "
          f"{'OK' if first < TARGET_S else 'MISSED'}")
    print(f"second CLI run (process start, model load, one offer): {warm:.1f} s")
    return 0 if first < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
