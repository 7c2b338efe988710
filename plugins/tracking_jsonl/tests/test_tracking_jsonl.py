"""The default tracking plugin: one JSON line per training run, appended."""

from __future__ import annotations

import json
import threading

from loyaltylens_tracking_jsonl import JsonlTracker

CARD = {"model_version": "propensity_v2", "role": "challenger", "hyperparameters": {"epochs": 2},
        "history": [{"epoch": 1, "train_loss": 0.6}, {"epoch": 2, "train_loss": 0.5}],
        "metrics": {"test": {"auc": 0.72}}, "scaler": {"mean": [1.0]}}


def test_each_run_is_one_line_with_what_compares_runs(tmp_path):
    tracker = JsonlTracker(tmp_path / "tracking" / "runs.jsonl")
    out = tracker.log_training(CARD, tmp_path / "models" / "propensity_v2")
    tracker.log_training({**CARD, "model_version": "propensity_v3"}, None)
    lines = [json.loads(line) for line in (tmp_path / "tracking" / "runs.jsonl").read_text().splitlines()]
    assert out == {"runs_file": str(tmp_path / "tracking" / "runs.jsonl")}
    assert [line["model_version"] for line in lines] == ["propensity_v2", "propensity_v3"]
    assert lines[0]["metrics"]["test"]["auc"] == 0.72 and lines[0]["history"][1]["train_loss"] == 0.5
    assert "scaler" not in lines[0] and lines[0]["model_dir"].endswith("propensity_v2")


def test_concurrent_runs_never_interleave_within_a_line(tmp_path):
    tracker = JsonlTracker(tmp_path / "runs.jsonl")
    big = {**CARD, "history": [{"epoch": e, "train_loss": 0.5} for e in range(2000)]}
    threads = [threading.Thread(target=tracker.log_training, args=(big, None)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(len(json.loads(line)["history"]) == 2000 for line in lines)
