"""How fast the CLI starts, and proof that it imports no heavy library to do so.

Targets (DESIGN §8, issues 12 and 14): `loyaltylens --help` and `loyaltylens plugins`
under 0.3 s, importing no heavy library; `loyaltylens run C001` on a warm data dir at most
2 s of wall time, importing neither sentence-transformers nor transformers (nor torch:
scoring runs in numpy), and none of the commands importing the service stack (fastapi,
uvicorn). Prints the median wall time of N runs of each command and the heavy modules
each one loaded. Set LOYALTYLENS_DATA_DIR to a built data dir, or one is built first.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# google.cloud itself is an empty namespace package that google-cloud-aiplatform's
# *-nspkg.pth imports at every interpreter start (even `python -c pass`): check the
# libraries under it instead.
HEAVY = ("torch", "sentence_transformers", "transformers", "onnxruntime", "weaviate", "openai", "boto3",
         "google.cloud.aiplatform", "google.cloud.storage", "duckdb", "fastapi", "uvicorn", "starlette")
# The stores a run reads: expected in `run`, never in --help or plugins.
RUN_MAY_IMPORT = {"duckdb"}
TARGETS_S = {"--help": 0.3, "plugins": 0.3, "run C001": 2.0}
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
    if not os.environ.get("LOYALTYLENS_DATA_DIR"):
        os.environ["LOYALTYLENS_DATA_DIR"] = tempfile.mkdtemp(prefix="ll-bench-")
    print(f"warming the data dir {os.environ['LOYALTYLENS_DATA_DIR']} (built on first use)")
    subprocess.run([exe, "run", "C001"], stdout=subprocess.DEVNULL, check=True)
    baseline = statistics.median(wall_time([sys.executable, "-c", "pass"]) for _ in range(RUNS))
    print(f"python startup alone: {baseline * 1000:.0f} ms")
    failed = False
    for command, target in TARGETS_S.items():
        args = command.split()
        times = [wall_time([exe, *args]) for _ in range(RUNS)]
        median = statistics.median(times)
        heavy = heavy_modules(args)
        allowed = RUN_MAY_IMPORT if args[0] == "run" else set()
        unexpected = [m for m in heavy.split(",") if m and m not in allowed]
        ok = median < target and not unexpected
        failed |= not ok
        print(
            f"loyaltylens {command:9s} median {median * 1000:6.0f} ms  min {min(times) * 1000:6.0f} ms  "
            f"target {target * 1000:.0f} ms  ratio {median / target:.2f}  heavy imports: {heavy or 'none'}  "
            f"{'OK' if ok else 'MISSED'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
