"""Campaigns end to end on the demo data and the real default plugins: list, dry run, run
with exports per channel, idempotence, --rerun against the frequency rule, resume after
kill -9, simulated outcomes with a planted lift that `report --campaign` finds, and the
HTML report in headless Chromium.

Each test's campaigns count caps in their own counter file and record into their own
feedback store, so the session's other tests (which share the built data dir) see nothing
of them."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFIG = """
[campaigns.everyone]
audience = 'recency_days >= 0'
channels = ["email", "push", "sms"]
holdout = 0.3
frequency = { group = "weekly", days = 7 }

[campaigns.gold]
audience = 'tier == "gold"'
categories = ["points_multiplier", "cashback"]
holdout = 0.1
"""


@pytest.fixture
def campaign_cli(built, tmp_path):
    """The built CLI with this test's config, counters and feedback store."""
    config = tmp_path / "loyaltylens.toml"
    config.write_text(CONFIG)
    env = {"LOYALTYLENS_DECISION_RULES__PATH": str(tmp_path / "counters.sqlite3"),
           "LOYALTYLENS_FEEDBACK_STORE_DUCKDB__PATH": str(tmp_path / "feedback")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return built("-q", "--config", str(config), *args, extra_env=env)

    run.env = {**built.env, **env}  # type: ignore[attr-defined]
    run.config = config  # type: ignore[attr-defined]
    run.data_dir = built.data_dir  # type: ignore[attr-defined]
    return run


def _day(days_ago: int) -> str:
    """Campaign runs are kept per day in the shared data dir: each test runs its own day."""
    return (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days_ago)).isoformat()


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_fresh_install_lists_and_dry_runs_the_demo_campaign(built):
    listed = _json(built("-q", "campaign", "list", "--json"))
    assert [c["name"] for c in listed] == ["gold-monthly"]
    assert listed[0]["holdout"] == 0.1 and listed[0]["active_today"]
    dry = _json(built("-q", "campaign", "run", "gold-monthly", "--dry-run", "--json"))
    assert dry["audience"] == dry["treated"] + dry["holdout"] > 0
    assert dry["offered"] + dry["capped"] + dry["ineligible"] == dry["treated"]
    assert dry["cost"] == pytest.approx(sum(row["cost"] for row in dry["per_offer"]))
    assert sum(dry["per_channel"].values()) == dry["offered"]
    assert not (Path(built.data_dir) / "campaigns" / "gold-monthly").exists(), "a dry run writes nothing"


def test_run_exports_every_channel_then_is_idempotent_and_reruns_against_the_frequency_rule(campaign_cli, tmp_path):
    out = tmp_path / "exports"
    dry = _json(campaign_cli("campaign", "run", "everyone", "--dry-run", "--json"))
    first = _json(campaign_cli("campaign", "run", "everyone", "--out", str(out), "--json"))
    assert first["status"] == "done" and first["treated"] == dry["treated"]
    assert first["offered"] == dry["offered"], "the dry run counted nothing, so the real run matches it"
    assert {e["channel"] for e in first["exports"]} == {"email", "push", "sms"}
    sent = 0
    for export in first["exports"]:
        if export["format"] == "csv":
            with open(export["path"], newline="") as fh:
                rows = list(csv.DictReader(fh))
            assert len(rows) == export["customers"]
            assert all(r["channel"] == export["channel"] and r["offer_id"] and r["headline"] for r in rows)
            sent += len(rows)
        else:
            import pyarrow.parquet as pq

            assert pq.read_table(export["path"]).num_rows == export["customers"]
    assert sent == first["offered"]

    again = _json(campaign_cli("campaign", "run", "everyone", "--out", str(out), "--json"))
    assert again["already_done"] and again["run_id"] == first["run_id"]

    rerun = _json(campaign_cli("campaign", "run", "everyone", "--rerun", "--json"))
    assert rerun["run_id"] == first["run_id"] + "-r2"
    assert rerun["offered"] == 0, "every treated customer had a campaign of group 'weekly' today"
    dry_after = _json(campaign_cli("campaign", "run", "everyone", "--dry-run", "--json"))
    assert dry_after["capped"] == dry_after["treated"] and dry_after["dropped"]["capped_frequency"] > 0


def test_collection_narrows_offers_and_unknown_names_fail_in_one_line(campaign_cli):
    dry = _json(campaign_cli("campaign", "run", "gold", "--dry-run", "--json"))
    assert dry["per_offer"], dry
    shown = _json(campaign_cli("campaign", "show", "gold", "--json"))
    assert shown["decides_for"]["categories"] == ["points_multiplier", "cashback"]
    assert dry["dropped"].get("not_in_collection", 0) > 0
    missing = campaign_cli("campaign", "run", "gol")
    assert missing.returncode != 0
    assert "campaign 'gol' is not configured" in missing.stderr and "gold" in missing.stderr
    outside = campaign_cli("campaign", "run", "gold", "--as-of", "2020-13-01")
    assert outside.returncode != 0 and "is not a date" in outside.stderr


def test_outcomes_with_a_planted_lift_are_found_by_the_campaign_report(campaign_cli, tmp_path):
    _json(campaign_cli("campaign", "run", "everyone", "--as-of", _day(1), "--json"))
    planted = _json(campaign_cli("feedback", "demo", "--campaign", "everyone", "--json"))
    assert planted["true_difference"] > 0.05, planted
    html = tmp_path / "campaign.html"
    report = _json(campaign_cli("report", "--campaign", "everyone", "--json", "--html", str(html)))
    low, high = report["effect"]["difference_ci"]
    assert low <= planted["true_difference"] <= high, (report["effect"], planted)
    assert report["effect"]["significant"], report["effect"]
    assert report["holdout"]["impressions"] > 0.2 * report["impressions"]
    assert {row["channel"] for row in report["by_channel"]} <= {"email", "push", "sms"}
    assert report["cost"] > 0 and report["cost_per_incremental_redemption"] > 0
    general = _json(campaign_cli("report", "--json"))
    assert not any(name.startswith("campaign:") for name in general["experiments"])
    assert general["offerless_impressions"] == report["holdout"]["impressions"]  # everyone treated got an offer

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "make test installs chromium (Debian package) for this check"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert "id=\"summary\"" in dom.stdout and "treated" in dom.stdout, dom.stderr[-2000:]


def test_a_run_killed_mid_batch_resumes_without_losing_or_repeating_a_customer(campaign_cli, tmp_path):
    argv = [sys.executable, "-m", "loyaltylens_core.cli", "-q", "--config", str(campaign_cli.config),
            "campaign", "run", "everyone", "--as-of", _day(2), "--chunk-size", "20", "--json"]
    proc = subprocess.Popen(argv, env=campaign_cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    run = Path(campaign_cli.data_dir) / "campaigns" / "everyone" / f"everyone-{_day(2).replace('-', '')}"
    deadline = time.monotonic() + 300
    parts: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(run.glob("decisions.parquet.parts/part-*.parquet"))
        if len(parts) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert parts, "the run finished before it could be killed; chunks are too large"
    killed = json.loads((run / "run.json").read_text())
    assert killed["status"] == "running"

    resumed = _json(campaign_cli("campaign", "run", "everyone", "--as-of", _day(2), "--json"))
    assert resumed["status"] == "done" and resumed["resumed"] >= 40
    import pyarrow.parquet as pq

    decided = pq.read_table(run / "decisions.parquet")["customer_id"].to_pylist()
    assert len(decided) == len(set(decided)) == resumed["treated"]
