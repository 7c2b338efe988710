"""The flow and its tasks (see the package docstring).

Every call goes through the CLI (``LOYALTYLENS_COMMAND`` or ``command=``, default
``loyaltylens`` on PATH) with ``--json``: the contract is the same command a cron job or an
Airflow BashOperator runs, and the output is the run's ``run.json``."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
from typing import Any, Sequence

from prefect import flow, get_run_logger, task

RETRIES = 2
RETRY_DELAY_S = 30


def _command(command: Sequence[str] | None, config: str | None) -> list[str]:
    base = list(command) if command else shlex.split(os.environ.get("LOYALTYLENS_COMMAND", "loyaltylens"))
    return [*base, "--quiet", *(["--config", config] if config else [])]


def _call(argv: list[str], timeout_s: float | None) -> Any:
    """Run the CLI; its one-line error becomes the task's failure (and retry) reason."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise RuntimeError(f"{shlex.join(argv[-6:])} failed ({done.returncode}): {reason}")
    return json.loads(done.stdout)


@task(name="due campaigns", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def due_campaigns(day: dt.date, command: Sequence[str] | None = None, config: str | None = None,
                  only: Sequence[str] | None = None) -> list[str]:
    """The campaigns whose start/end include ``day`` (all of them, or those in ``only``), as
    LoyaltyLens says (``campaign list --as-of DAY``)."""
    listed = _call([*_command(command, config), "campaign", "list", "--as-of", day.isoformat(), "--json"], 300)
    return [c["name"] for c in listed if c["active"] and (not only or c["name"] in only)]


@task(name="run campaign", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S,
      task_run_name="{name} {day}")
def run_campaign(name: str, day: dt.date, out: str | None = None, command: Sequence[str] | None = None,
                 config: str | None = None, timeout_s: float | None = None,
                 chunk_size: int | None = None) -> dict[str, Any]:
    """One campaign's run for ``day``; a retry resumes it where the failed attempt stopped."""
    argv = [*_command(command, config), "campaign", "run", name, "--as-of", day.isoformat(), "--json"]
    if chunk_size:
        argv += ["--chunk-size", str(chunk_size)]
    if out:
        argv += ["--out", f"{out.rstrip('/')}/{day.isoformat()}"]
    result = _call(argv, timeout_s)
    get_run_logger().info("%s: %s (%s offered, %s held out)", result["run_id"],
                          "already done" if result.get("already_done") else "done",
                          result.get("offered"), result.get("holdout"))
    return dict(result)


@flow(name="loyaltylens-campaigns", log_prints=True)
def run_due_campaigns(day: dt.date | None = None, out: str | None = None, command: list[str] | None = None,
                      config: str | None = None, only: list[str] | None = None,
                      timeout_s: float | None = None, chunk_size: int | None = None) -> list[dict[str, Any]]:
    """Every campaign running on ``day`` (default: today, UTC), one task each, each retried
    on failure. One campaign failing for good does not stop the others; the flow then fails."""
    when = day or dt.datetime.now(dt.timezone.utc).date()
    names = due_campaigns(when, command, config, only)
    futures = [run_campaign.submit(name, when, out, command, config, timeout_s, chunk_size) for name in names]
    results, failed = [], []
    for name, future in zip(names, futures):
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - reported below, after the other campaigns ran
            failed.append(f"{name}: {exc}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(names)} campaigns failed: " + "; ".join(failed))
    return results


def deployment(cron: str = "0 5 * * *", timezone: str = "UTC", **parameters: Any) -> Any:
    """The flow as a daily deployment (``.serve()`` it, or ``prefect deploy`` it to a work pool):

        from loyaltylens_prefect import deployment
        from prefect import serve
        serve(deployment(out="s3://drops/campaigns"))
    """
    from prefect.schedules import Cron

    return run_due_campaigns.to_deployment(name="daily", schedules=[Cron(cron, timezone=timezone)],
                                           parameters=parameters)
