"""A campaign over BENCH_CUSTOMERS customers (default 1,000,000; issue 29), end to end.

`loyaltylens campaign run` over the demo's latest snapshot repeated with distinct ids (as
batch_engines.py builds it): audience selection from the feature store (every customer), a
10% holdout, the batch through decisioning with a frequency rule, treated and holdout
impressions recorded, Parquet and CSV exports for three channels. Once with the `local`
engine, once with `ray`. Prints customers/s over the whole command (process start included)
and peak RSS of the driver and of what it started. Target: >= 10,000 customers/s local on 2 cores.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from batch_engines import CUSTOMERS, PeakRSS, many_customers_setup, measured

CONFIG = """
[campaigns.everyone]
audience = 'recency_days >= 0'
holdout = 0.1
channels = ["email", "push", "sms"]
frequency = { group = "bench", days = 7 }
"""
TARGET = 10_000


def campaign(env: dict[str, str], config: Path, engine: str, out: Path) -> tuple[float, dict, PeakRSS]:
    return measured(["--config", str(config), "--use", f"batch_engine={engine}", "campaign", "run", "everyone",
                     "--out", str(out), "--json"], env)


def main() -> int:
    work, env = many_customers_setup("ll-bench-campaign-")
    print(f"campaign over {CUSTOMERS:,} customers (the demo's latest snapshot repeated), 10% holdout, 3 channels, 2 cores")
    rates = {}
    for engine in ("local", "ray"):
        config = work / f"{engine}.toml"
        config.write_text(CONFIG)
        # Each engine its own counters and feedback store: the second run is not capped by the first.
        env_engine = {**env, "LOYALTYLENS_DECISION_RULES__PATH": str(work / f"{engine}-counters.sqlite3"),
                      "LOYALTYLENS_FEEDBACK_STORE_DUCKDB__PATH": str(work / f"{engine}-feedback"),
                      "LOYALTYLENS_DATA_DIR": str(work / "data")}
        shutil.rmtree(work / "data" / "campaigns", ignore_errors=True)
        wall, result, peak = campaign(env_engine, config, engine, work / f"{engine}-exports")
        customers = result["treated"] + result["holdout"]
        rates[engine] = customers / wall
        print(f"{engine:5}: {customers:,} customers ({result['offered']:,} offered, {result['holdout']:,} held out) "
              f"in {wall:.1f} s = {rates[engine]:,.0f}/s end to end (run.json: {result['seconds']:.1f} s); "
              f"peak RSS driver {peak.driver / 2**20:,.0f} MiB, processes it started {peak.others / 2**20:,.0f} MiB")
    verdict = "OK" if rates["local"] >= TARGET else "MISSED"
    print(f"local {rates['local']:,.0f}/s vs target {TARGET:,}/s: {verdict}; ray / local = {rates['ray'] / rates['local']:.0%}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
