"""The loop closed on the real pipeline and the demo data: offers handed out are recorded,
outcomes imported, and `report` finds what the demo planted: a calibrated model and the
reminder's lift. The HTML report renders in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow


def test_run_and_batch_record_impressions_that_outcomes_join(built, tmp_path):
    run = built("-q", "run", "C002", "--json")
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    ids = tmp_path / "ids.txt"
    ids.write_text("C003\nC004\n")
    batch = built("-q", "batch", "--ids", str(ids), "--out", str(tmp_path / "out.parquet"))
    assert batch.returncode == 0, batch.stderr
    import pyarrow.parquet as pq

    batch_ids = pq.read_table(tmp_path / "out.parquet")["impression_id"].to_pylist()
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("impression_id,event,rating\n"
                        f"{run_id},redeemed,5\n{batch_ids[0]},clicked,\n{batch_ids[1]},sold,\n")
    first = built("-q", "feedback", "import", str(outcomes), "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["added"], summary["rejected"]) == (2, 1)
    assert "line 4: event 'sold'" in first.stderr or summary["rejects_file"].endswith("outcomes.rejects.csv")
    second = json.loads(built("-q", "feedback", "import", str(outcomes), "--json").stdout)
    assert (second["added"], second["duplicates"]) == (0, 2)


def test_the_demo_loop_finds_the_planted_lift_and_a_calibrated_model(built, tmp_path):
    demo = built("-q", "feedback", "demo", "--json")
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["impressions"] == 1000
    html = tmp_path / "report.html"
    # Other tests of the session hand out offers in the same data dir: the demo's only.
    proc = built("-q", "report", "--json", "--drift", "--source", "demo", "--html", str(html))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    experiment = report["experiments"]["demo_reminder"]
    reminder = next(v for v in experiment["variants"] if v["variant"] == "reminder")
    assert experiment["control"] == "control"
    assert reminder["significant"] and reminder["lift"] > 0.08, reminder
    assert report["drift"]["status"] == "ok"
    calibration = report["calibration"]
    assert calibration["ece"] < 0.08, calibration
    assert calibration["auc"] > 0.65, calibration

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "make test installs chromium (Debian package) for this check"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Propensity calibration" in dom.stdout and "Experiment demo_reminder" in dom.stdout
    assert "Drift" in dom.stdout and dom.stdout.count("data:image/png;base64,") == 5  # variants, calibration, 2 groups, drift
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1000,2400", html.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "the plots did not render"  # a blank page has a handful of colours


def test_monitor_flags_the_planted_drift_and_nothing_on_the_plain_demo(built, tmp_path):
    plain = built("-q", "monitor", "--json")
    assert plain.returncode == 0, plain.stdout  # consecutive demo snapshots: nothing moved
    drifted = built("-q", "monitor", "--json", extra_env={
        "LOYALTYLENS_DATA_DIR": str(tmp_path / "drift"), "LOYALTYLENS_DEMO_DRIFT": "true",
        "LOYALTYLENS_DEMO_CUSTOMERS": "2000"})
    assert drifted.returncode == 2, drifted.stderr
    features = json.loads(drifted.stdout)["features"]
    assert features["frequency_30d"]["status"] == "critical"  # customers shop half as often
    assert features["channel_preference"]["status"] == features["tier"]["status"] == "ok"


def test_an_experiment_pins_a_trained_challenger_for_its_variant(built, tmp_path):
    trained = built("-q", "train", "--json")
    assert trained.returncode == 0, trained.stderr
    challenger = json.loads(trained.stdout)["model_version"]
    from pathlib import Path

    runs = Path(json.loads(trained.stdout)["tracking"]["runs_file"]).read_text().splitlines()
    assert json.loads(runs[-1])["model_version"] == challenger  # the default tracking plugin's log
    champion = next(m["version"] for m in json.loads(built("-q", "models", "--json").stdout) if m["role"] == "champion")
    assert challenger != champion
    config = tmp_path / "loyaltylens.toml"
    config.write_text(f"""
[experiments.model_test]
control = "champion"
[experiments.model_test.variants.champion]
share = 0.5
[experiments.model_test.variants.challenger]
share = 0.5
model_version = "{challenger}"
""")
    shown = built("-q", "--config", str(config), "config", "show", "--json")
    assert json.loads(shown.stdout)["experiments"]["model_test"]["variants"]["challenger"]["model_version"] == challenger
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(f"C{i:03d}" for i in range(100, 160)) + "\n")
    out = tmp_path / "out.parquet"
    proc = built("-q", "--config", str(config), "batch", "--ids", str(ids), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pylist()
    by_variant = {dict(r["variants"])["model_test"]: set() for r in rows}
    for r in rows:
        by_variant[dict(r["variants"])["model_test"]].add(r["model_version"])
    assert by_variant == {"champion": {champion}, "challenger": {challenger}}
    single = json.loads(built("-q", "--config", str(config), "run", rows[0]["customer_id"], "--json").stdout)
    assert single["propensity"]["model_version"] == rows[0]["model_version"]
    assert single["experiments"] == dict(rows[0]["variants"])
