"""`loyaltylens train --use tracking=mlflow` on the real pipeline: the run in a local MLflow
store, and a tracking server that is down reported in one line after the version is saved."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_train_with_the_mlflow_tracker_logs_the_real_run(built, tmp_path):
    """The real torch model trained through the CLI, logged to a sqlite store in a temp dir."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"LOYALTYLENS_TRACKING_MLFLOW__TRACKING_URI": uri,
           "LOYALTYLENS_TRACKING_MLFLOW__ARTIFACT_LOCATION": (tmp_path / "artifacts").as_uri()}
    proc = built("-q", "--use", "tracking=mlflow", "train", "--json", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    card = json.loads(proc.stdout)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(card["tracking"]["run_id"])
    assert run.info.run_name == card["model_version"] and "test.auc" in run.data.metrics
    epochs = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(epochs) == card["hyperparameters"]["epochs"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/card.json"}


def test_an_unreachable_tracking_server_is_one_line_after_training(built):
    env = {"LOYALTYLENS_TRACKING_MLFLOW__TRACKING_URI": "http://user:s3cret@127.0.0.1:9",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    proc = built("-q", "--use", "tracking=mlflow", "train", extra_env=env)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "is trained and saved, but tracker 'mlflow' failed" in proc.stderr, proc.stderr
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(lines) <= 3
