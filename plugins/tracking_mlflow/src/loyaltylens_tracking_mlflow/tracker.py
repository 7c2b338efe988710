"""One MLflow run per trained model version, through ``MlflowClient`` (no process-wide
fluent state: a service or a test may hold two trackers pointing at different servers).

What a run holds: the hyperparameters and data facts as params, every epoch's
``train_loss`` / ``val_auc`` as step metrics, the held-out metrics of the card (``test.auc``,
``test.brier``...), the card as ``model_card.json``, the version's directory (weights,
card, reliability plot) under ``model/``; the version is then registered under
``registered_model`` with tags naming the LoyaltyLens version and its role.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from loyaltylens_core.kernel.config import mask

PARAM_KEYS = ("architecture", "feature_version", "horizon_days", "training_data_hash", "threshold", "label")
MAX_PARAM = 500  # MLflow's limit on a param value's length


class MLflowTracker:
    def __init__(self, settings: Any, data_dir: Path) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        default_dir = Path(data_dir) / "mlflow"
        self.uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_dir / 'mlflow.db'}"
        local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
        if self.uri == f"sqlite:///{default_dir / 'mlflow.db'}":
            default_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts = settings.artifact_location or ((default_dir / "artifacts").as_uri() if local else None)
        self.client = MlflowClient(tracking_uri=self.uri)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.settings.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(self.settings.experiment, artifact_location=self.artifacts))

    def log_training(self, card: dict[str, Any], model_dir: Any) -> dict[str, Any]:
        from mlflow.entities import Metric, Param, RunTag

        version = str(card.get("model_version", "unknown"))
        run = self.client.create_run(self._experiment_id(), run_name=version, tags={
            "loyaltylens.model_version": version, "loyaltylens.role": str(card.get("role", "")),
        })
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            params = [Param(k, _text(v)) for k, v in _params(card)]
            metrics = [Metric(name, value, now, step) for name, value, step in _metrics(card)]
            for start in range(0, len(params), 100):  # log_batch takes up to 100 params, 1000 metrics
                self.client.log_batch(run_id, params=params[start : start + 100])
            for start in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
            self.client.log_batch(run_id, tags=[RunTag("loyaltylens.training_data_hash",
                                                       str(card.get("training_data_hash", "")))])
            self.client.log_dict(run_id, card, "model_card.json")
            if model_dir is not None and Path(model_dir).is_dir():
                self.client.log_artifacts(run_id, str(model_dir), "model")
            self.client.set_terminated(run_id, "FINISHED")
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        out: dict[str, Any] = {"run_id": run_id, "experiment": self.settings.experiment, "tracking_uri": mask("uri", self.uri)}
        name = self.settings.registered_model
        if name:
            from mlflow.exceptions import MlflowException

            try:
                self.client.get_registered_model(name)
            except MlflowException:
                self.client.create_registered_model(name, description="LoyaltyLens propensity model")
            registered = self.client.create_model_version(
                name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                tags={"loyaltylens.model_version": version, "loyaltylens.role": str(card.get("role", ""))},
            )
            out.update(registered_model=name, registry_version=str(registered.version))
        return out


def _text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."


def _params(card: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in (card.get("hyperparameters") or {}).items():
        yield key, value
    for key in PARAM_KEYS:
        if key in card:
            yield key, card[key]


def _metrics(card: dict[str, Any]) -> Iterator[tuple[str, float, int]]:
    """Per-epoch history as steps; every number under ``metrics`` (``test.auc``...) at step 0."""
    for entry in card.get("history") or []:
        step = int(entry.get("epoch", 0))
        for key, value in entry.items():
            if key != "epoch" and _finite(value):
                yield key, float(value), step
    yield from ((name, value, 0) for name, value in _flatten(card.get("metrics") or {}, ""))


def _flatten(tree: Any, prefix: str) -> Iterator[tuple[str, float]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif _finite(tree):
        yield prefix, float(tree)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
