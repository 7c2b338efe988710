"""The Prefect flow in Prefect's own test harness (a temporary SQLite-backed API), driving
the real `loyaltylens` command on a small demo data dir: it runs the campaigns due on a
day, a second trigger of the day does nothing, and a campaign whose first attempt is
killed mid-run is retried by Prefect and resumed by LoyaltyLens."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from loyaltylens_prefect import deployment, run_due_campaigns

CONFIG = """
[campaigns.gold]
audience = 'tier == "gold"'
holdout = 0.1
channels = ["email"]

[campaigns.xmas]
start = 2026-12-20
end = 2026-12-26
holdout = 0.2

[campaigns.spring]
start = 2026-03-01
end = 2026-03-31
"""

# Kills its first `loyaltylens campaign run` once two parts of the batch are written (as a
# crashed worker would die), then behaves like the command on every later attempt.
KILL_FIRST_ATTEMPT = r'''
import os, signal, subprocess, sys, time
from pathlib import Path
marker = Path(os.environ["KILL_MARKER"])
argv = [os.environ["LOYALTYLENS_COMMAND"], *sys.argv[1:]]
if "run" not in sys.argv or marker.exists():
    sys.exit(subprocess.call(argv))
marker.write_text("killed once")
proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
root = Path(os.environ["LOYALTYLENS_DATA_DIR"]) / "campaigns"
while proc.poll() is None:
    if len(list(root.glob("*/*/decisions.parquet.parts/part-*.parquet"))) >= 2:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        sys.exit(137)
    time.sleep(0.02)
sys.exit(proc.returncode)
'''


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The real loyaltylens command over a small demo data dir, built once."""
    command = os.environ.get("LOYALTYLENS_COMMAND") or shutil.which("loyaltylens")
    assert command, "set LOYALTYLENS_COMMAND to the loyaltylens command (make test does)"
    root = tmp_path_factory.mktemp("prefect-campaigns")
    (root / "loyaltylens.toml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    env.update({"LOYALTYLENS_DATA_DIR": str(root / "data"), "LOYALTYLENS_DEMO_CUSTOMERS": "300",
                "LOYALTYLENS_COMMAND": command})
    built = subprocess.run([command, "-q", "--config", str(root / "loyaltylens.toml"), "run", "C001", "--json"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert built.returncode == 0, built.stderr
    return {"command": command, "root": root, "env": env, "config": str(root / "loyaltylens.toml")}


@pytest.fixture
def environment(cli, monkeypatch):
    for key, value in cli["env"].items():
        monkeypatch.setenv(key, value)
    return cli


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_daily_deployment_runs_the_due_campaigns_once_a_day(environment, tmp_path):
    plan = deployment(out=str(tmp_path / "drops"))
    assert plan.schedules[0].schedule.cron == "0 5 * * *" and plan.parameters["out"] == str(tmp_path / "drops")

    december = run_due_campaigns(day=dt.date(2026, 12, 6), out=str(tmp_path / "drops"),
                                 command=[environment["command"]], config=environment["config"])
    assert [r["campaign"] for r in december] == ["gold"], "xmas has not started, spring is over"
    assert december[0]["status"] == "done" and december[0]["offered"] > 0
    assert (tmp_path / "drops" / "2026-12-06" / "gold-email.csv").is_file()

    again = run_due_campaigns(day=dt.date(2026, 12, 6), command=[environment["command"]], config=environment["config"])
    assert again[0]["already_done"], "a second trigger of the same day does nothing"

    christmas = run_due_campaigns(day=dt.date(2026, 12, 21), command=[environment["command"]],
                                  config=environment["config"])
    assert sorted(r["campaign"] for r in christmas) == ["gold", "xmas"]


def test_a_campaign_killed_mid_run_is_retried_and_resumed(environment, tmp_path, monkeypatch):
    wrapper = tmp_path / "kill_first.py"
    wrapper.write_text(KILL_FIRST_ATTEMPT)
    monkeypatch.setenv("KILL_MARKER", str(tmp_path / "killed"))
    from loyaltylens_prefect.flows import run_campaign

    quick = run_campaign.with_options(retry_delay_seconds=0)
    monkeypatch.setattr("loyaltylens_prefect.flows.run_campaign", quick)
    results = run_due_campaigns(day=dt.date(2026, 12, 7), command=[sys.executable, str(wrapper)],
                                config=environment["config"], only=["gold"], chunk_size=10)
    assert (tmp_path / "killed").is_file(), "the first attempt was killed"
    assert results[0]["status"] == "done" and results[0]["resumed"] >= 20, results[0]
    run = Path(environment["env"]["LOYALTYLENS_DATA_DIR"]) / "campaigns" / "gold" / "gold-20261207"
    assert json.loads((run / "run.json").read_text())["status"] == "done"
