"""The MLflow tracker against a real local MLflow store (sqlite tracking URI, file artifacts):
what `loyaltylens train --use tracking=mlflow` leaves behind, read back with MLflow's client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loyaltylens_tracking_mlflow import MLflowTrackerSettings
from loyaltylens_tracking_mlflow.tracker import MLflowTracker

CARD = {
    "model_version": "propensity_v3", "role": "challenger", "architecture": "tabular-transformer",
    "feature_version": "v1", "horizon_days": 30, "training_data_hash": "abc123", "threshold": 0.5,
    "hyperparameters": {"d_model": 32, "epochs": 3, "learning_rate": 0.002},
    "history": [{"epoch": e, "train_loss": 0.7 - 0.05 * e, "val_auc": 0.6 + 0.02 * e} for e in (1, 2, 3)],
    "metrics": {"test": {"auc": 0.72, "brier": 0.21, "n": 2000}, "val": {"auc": 0.71}},
}


def test_a_training_run_is_logged_with_epochs_card_model_and_registered_version(tmp_path):
    from mlflow import MlflowClient

    model_dir = tmp_path / "propensity_v3"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    (model_dir / "card.json").write_text(json.dumps(CARD))
    tracker = MLflowTracker(MLflowTrackerSettings(), tmp_path / "data")
    logged = tracker.log_training(CARD, model_dir)
    assert logged["registered_model"] == "loyaltylens-propensity" and logged["registry_version"] == "1"
    assert (tmp_path / "data" / "mlflow" / "mlflow.db").is_file()

    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(logged["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "propensity_v3"
    assert run.data.params["d_model"] == "32" and run.data.params["training_data_hash"] == "abc123"
    assert run.data.metrics["test.auc"] == 0.72 and run.data.tags["loyaltylens.role"] == "challenger"
    history = client.get_metric_history(logged["run_id"], "val_auc")
    assert [(m.step, round(m.value, 2)) for m in history] == [(1, 0.62), (2, 0.64), (3, 0.66)]
    artifacts = {a.path for a in client.list_artifacts(logged["run_id"], "model")}
    assert artifacts == {"model/card.json", "model/model.safetensors"}
    local = Path(client.download_artifacts(logged["run_id"], "model_card.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text())["model_version"] == "propensity_v3"

    again = tracker.log_training({**CARD, "model_version": "propensity_v4"}, None)
    assert again["registry_version"] == "2"
    version = client.get_model_version("loyaltylens-propensity", "2")
    assert version.tags["loyaltylens.model_version"] == "propensity_v4"


def test_no_registry_when_registered_model_is_empty(tmp_path):
    tracker = MLflowTracker(MLflowTrackerSettings(registered_model=""), tmp_path)
    assert "registered_model" not in tracker.log_training(CARD, None)


def test_mlflow_is_imported_only_when_the_tracker_is_built():
    code = ("import sys, loyaltylens_tracking_mlflow\n"
            "from loyaltylens_core.kernel.registry import load_registry\n"
            "load_registry()\n"
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
