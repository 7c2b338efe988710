"""Gradient-boosted trees on the same features, with the same evaluation and calibration.

Versions live in ``<model_dir>/lightgbm_vN/`` as LightGBM's text model plus the same model
card the torch plugin writes (metrics beside the oracle on demo data, calibrator,
reliability table and plot). Categorical features are LightGBM categoricals.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from loyaltylens_core.sdk import quality
from loyaltylens_core.kernel.contracts import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    CustomerFeatures,
    PropensityScore,
    ProvidesTrainingExamples,
    TrainingSet,
)
from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.model_versions import ModelStore

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_propensity_lightgbm import LightGBMSettings

NUMERIC = NUMERIC_FEATURES
CATEGORICAL = CATEGORICAL_FEATURES
COLUMNS = (*NUMERIC, *CATEGORICAL)
VERSION_PATTERN = re.compile(r"^lightgbm_v(\d+)$")
LABEL = "redeemed any offer in the {horizon} days after as_of"


def matrix(features: Sequence[CustomerFeatures]) -> np.ndarray:
    """Rows of numeric features then category codes (as floats, LightGBM's categoricals)."""
    out = np.empty((len(features), len(COLUMNS)), dtype=np.float64)
    for i, f in enumerate(features):
        out[i, : len(NUMERIC)] = [getattr(f, name) for name in NUMERIC]
        out[i, len(NUMERIC):] = [CATEGORICAL[name].index(getattr(f, name)) for name in CATEGORICAL]
    return out


class LightGBMPropensity:
    def __init__(self, settings: LightGBMSettings, context: StageContext) -> None:
        self.settings = settings
        self.context = context
        self.model_dir = Path(settings.model_dir or context.data_dir / "models-lightgbm")
        # Versions and the champion (`loyaltylens models / promote / rollback`).
        self.models = ModelStore(self.model_dir, VERSION_PATTERN, "lightgbm_v")
        self.booster: Any = None
        self.card: dict[str, Any] = {}
        self.version = ""

    # --- versions -----------------------------------------------------------------

    def versions(self) -> list[str]:
        return self.models.versions()

    def prepare(self) -> None:
        if self.booster is not None:
            return
        if self.settings.version:
            self.load(self.settings.version)
        elif serving := self.models.serving():  # the champion, else the newest
            self.load(serving)
        elif self.context.read_only:
            raise StageError(f"no trained LightGBM model in {self.model_dir} and this process may not train one",
                             "run `loyaltylens --use propensity=lightgbm train` first")
        else:
            self.train()

    def load(self, version: str) -> None:
        import lightgbm as lgb

        directory = self.model_dir / version
        if not (directory / "card.json").is_file() or not (directory / "model.txt").is_file():
            raise StageError(f"LightGBM model {version!r} not found in {self.model_dir}",
                             f"available: {', '.join(self.versions()) or 'none'}; run `loyaltylens train`")
        try:
            card = json.loads((directory / "card.json").read_text())
            booster = lgb.Booster(model_file=str(directory / "model.txt"))
        except Exception as exc:  # noqa: BLE001 - an unreadable model is one clear line
            raise StageError(f"LightGBM model {directory} is corrupt ({type(exc).__name__})",
                             "delete it and run `loyaltylens train`") from None
        self.booster, self.card, self.version = booster, card, card["model_version"]

    # --- training -------------------------------------------------------------------

    def _training_set(self) -> TrainingSet:
        store = self.context.component("feature_store")
        if not isinstance(store, ProvidesTrainingExamples):
            raise StageError("the selected feature store cannot provide training examples",
                             "train with a feature store that has training_examples(), e.g. duckdb")
        return store.training_examples(self.settings.horizon_days)

    def train(self) -> dict[str, Any]:
        """Train a new version; early stopping and calibration on the validation customers'
        earlier snapshots, metrics on the rest (the latest window is the headline)."""
        import lightgbm as lgb

        s = self.settings
        data = self._training_set()
        labels = np.array(data.labels, dtype=np.float64)
        rows = quality.evaluation_rows([f.customer_id for f in data.features], [f.as_of for f in data.features])
        if min(len(rows[name]) for name in ("train", "val", "test")) == 0:
            raise StageError(f"too few training examples ({len(labels)}) to split", "use more customers")
        x = matrix(data.features)
        categorical = list(range(len(NUMERIC), len(COLUMNS)))
        params = {"objective": "binary", "learning_rate": s.learning_rate, "num_leaves": s.num_leaves,
                  "min_child_samples": s.min_child_samples, "bagging_fraction": 0.8, "bagging_freq": 1,
                  "feature_fraction": 0.9, "seed": self.context.seed, "deterministic": True,
                  "num_threads": os.cpu_count() or 1, "verbose": -1}
        started = time.perf_counter()
        train_set = lgb.Dataset(x[rows["train"]], labels[rows["train"]], feature_name=list(COLUMNS),
                                categorical_feature=categorical, free_raw_data=False)
        val_set = lgb.Dataset(x[rows["val"]], labels[rows["val"]], reference=train_set)
        with self.context.progress.task("Training LightGBM propensity model", total=s.n_estimators) as advance:
            booster = lgb.train(params, train_set, num_boost_round=s.n_estimators, valid_sets=[val_set],
                                callbacks=[lgb.early_stopping(s.early_stopping_rounds, verbose=False),
                                           lambda env: advance(1)])
        train_seconds = time.perf_counter() - started
        raw = booster.predict(x, num_iteration=booster.best_iteration)
        evaluation = quality.evaluate_model(data, raw, rows, s.threshold, seed=self.context.seed)
        version = self._next_version()
        card = {
            "model_version": version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "architecture": "gradient-boosted trees (LightGBM)",
            "numeric_features": list(NUMERIC),
            "categorical_features": {k: list(v) for k, v in CATEGORICAL.items()},
            "feature_version": data.features[0].feature_version,
            "label": LABEL.format(horizon=data.horizon_days),
            "horizon_days": data.horizon_days,
            "training_data_hash": data.data_hash,
            **evaluation,
            "threshold": s.threshold,
            "hyperparameters": {**params, "best_iteration": booster.best_iteration},
            "train_seconds": train_seconds,
            "serving": {"exportable": False, "why": "LightGBM trees are not TorchScript; deploy targets need it"},
        }
        self._save(version, booster, card)
        role = self.models.trained(version)  # the first version is the champion; later ones challengers
        if role == "champion" or self.booster is None:  # a challenger does not replace what serves here
            self.load(version)
        return {**card, "role": role}

    def _next_version(self) -> str:
        return self.models.next_version()

    def _save(self, version: str, booster: Any, card: dict[str, Any]) -> None:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.model_dir))
        try:
            booster.save_model(str(staging / "model.txt"), num_iteration=booster.best_iteration)
            (staging / "card.json").write_text(json.dumps(card, indent=2))
            quality.plot_reliability(card, staging / "reliability.png")
            os.replace(staging, self.model_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- scoring ----------------------------------------------------------------------

    def _scores(self, features: Sequence[CustomerFeatures]) -> np.ndarray:
        if self.booster is None:
            self.prepare()
        raw = self.booster.predict(matrix(features))
        return quality.calibrate(raw, self.card.get("calibration"))

    def predict(self, features: CustomerFeatures) -> PropensityScore:
        return self.predict_many([features])[0]

    def predict_many(self, features: Sequence[CustomerFeatures]) -> list[PropensityScore]:
        threshold = self.settings.threshold
        return [
            PropensityScore(customer_id=f.customer_id, score=float(score), label=int(score >= threshold),
                            model_version=self.version)
            for f, score in zip(features, self._scores(features).tolist())
        ]
