"""How fast the CLI starts, and proof that it imports no heavy library to do so.

Target (DESIGN §8): `loyaltylens --help` and `loyaltylens plugins` under 0.3 s,
importing none of torch, sentence_transformers, weaviate, openai, boto3, google.cloud.
Prints the median wall time of N runs of each command and the heavy modules loaded.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

# google.cloud itself is an empty namespace package that google-cloud-aiplatform's
# *-nspkg.pth imports at every interpreter start (even `python -c pass`): check the
# libraries under it instead.
HEAVY = ("torch", "sentence_transformers", "transformers", "weaviate", "openai", "boto3",
         "google.cloud.aiplatform", "google.cloud.storage", "duckdb")
TARGET_S = 0.3
RUNS = int(os.environ.get("BENCH_RUNS", "7"))

PROBE = """
import sys
sys.argv = ["loyaltylens", *{args!r}]
from loyaltylens_core.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def wall_time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def heavy_modules(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True, text=True
    )
    line = [l for l in proc.stderr.splitlines() if l.startswith("HEAVY=")]
    return line[-1][len("HEAVY="):] if line else "?"


def main() -> int:
    exe = shutil.which("loyaltylens") or os.path.join(os.path.dirname(sys.executable), "loyaltylens")
    baseline = statistics.median(wall_time([sys.executable, "-c", "pass"]) for _ in range(RUNS))
    print(f"python startup alone: {baseline * 1000:.0f} ms")
    failed = False
    for args in (["--help"], ["plugins"]):
        times = [wall_time([exe, *args]) for _ in range(RUNS)]
        median = statistics.median(times)
        heavy = heavy_modules(args)
        ok = median < TARGET_S and not heavy
        failed |= not ok
        print(
            f"loyaltylens {' '.join(args):8s} median {median * 1000:6.0f} ms  min {min(times) * 1000:6.0f} ms  "
            f"target {TARGET_S * 1000:.0f} ms  ratio {median / TARGET_S:.2f}  heavy imports: {heavy or 'none'}  "
            f"{'OK' if ok else 'MISSED'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
