"""Real LightGBM training on small synthetic data with a known true probability (seconds)."""

from __future__ import annotations

import datetime as dt
import json
import random

import numpy as np
import pytest

from loyaltylens_core.kernel.contracts import TrainingSet
from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.testing import make_context, make_features
from loyaltylens_propensity_lightgbm import LightGBMSettings, build


class ExampleStore:
    """Two snapshot dates; labels drawn from a known probability of the features."""

    def __init__(self, n: int = 3000) -> None:
        rng = random.Random(0)
        feats, labels, truth = [], [], []
        for i in range(n):
            f = make_features(
                f"C{i:04d}", offer_redemption_rate=rng.random(), recency_days=rng.uniform(0, 120),
                engagement_score=rng.random(), frequency_30d=rng.randint(0, 10),
                tier=rng.choice(["bronze", "silver", "gold", "platinum"]),
                channel_preference=rng.choice(["in-store", "mobile", "web"]),
                as_of=dt.date(2026, 5, 1) if i % 3 else dt.date(2026, 6, 1),
            )
            p = 1 / (1 + np.exp(-(3 * f.offer_redemption_rate - f.recency_days / 40 + (f.tier == "gold"))))
            feats.append(f)
            labels.append(int(rng.random() < p))
            truth.append(float(p))
        self.data = TrainingSet(features=tuple(feats), labels=tuple(labels), horizon_days=30, data_hash="lgb",
                                truth=tuple(truth))

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        return self.data


def model_for(tmp_path, store=None, read_only=False, **settings):
    context = make_context(tmp_path, "propensity", "lightgbm", components={"feature_store": store or ExampleStore()})
    context.read_only = read_only
    return build(LightGBMSettings(**settings), context)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = model_for(tmp_path_factory.mktemp("lgb"))
    model.prepare()
    return model


def test_trains_a_calibrated_versioned_model_reported_beside_the_oracle(trained):
    card = trained.card
    assert trained.version == "lightgbm_v1" and card["evaluation"]["headline"] == "test_latest"
    assert set(card["metrics"]) == {"train", "val", "test", "test_latest"}
    for key in ("auc", "pr_auc", "brier", "ece", "oracle_auc", "oracle_brier"):
        assert card[key] == card["metrics"]["test_latest"][key]
    assert card["auc"] > 0.7 and card["auc"] > card["oracle_auc"] - 0.03  # learns the known signal
    assert card["ece"] < 0.05 and card["calibration"]["method"] in ("temperature", "isotonic", "none")
    assert (trained.model_dir / "lightgbm_v1" / "reliability.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((trained.model_dir / "lightgbm_v1" / "card.json").read_text())["serving"]["exportable"] is False


def test_scores_are_calibrated_probabilities_and_predict_agrees_with_predict_many(trained):
    feats = [make_features(f"C{i}", offer_redemption_rate=i / 20, recency_days=float(i * 3)) for i in range(20)]
    many = trained.predict_many(feats)
    assert [trained.predict(f).score for f in feats] == pytest.approx([p.score for p in many])
    assert all(0 <= p.score <= 1 and p.model_version == "lightgbm_v1" for p in many)
    assert many[-1].score > many[0].score or many[0].score > many[-1].score  # not a constant


def test_a_new_process_loads_the_saved_version_with_identical_scores(tmp_path, trained):
    again = model_for(tmp_path, model_dir=trained.model_dir)
    again.prepare()
    feats = [make_features("C1", offer_redemption_rate=0.3), make_features("C2", tier="platinum")]
    assert [p.score for p in again.predict_many(feats)] == [p.score for p in trained.predict_many(feats)]


def test_a_worker_without_a_model_says_what_to_run(tmp_path):
    with pytest.raises(StageError, match="lightgbm train"):
        model_for(tmp_path, read_only=True).prepare()


def test_a_missing_pinned_version_names_the_available_ones(tmp_path, trained):
    with pytest.raises(StageError, match="lightgbm_v1"):
        model_for(tmp_path, model_dir=trained.model_dir, version="lightgbm_v9").prepare()
