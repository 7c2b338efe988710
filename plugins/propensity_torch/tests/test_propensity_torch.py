"""Real training of the tabular transformer on small synthetic data (seconds)."""

from __future__ import annotations

import datetime as dt
import json
import random

import numpy as np
import pytest
import torch

from loyaltylens_core.kernel.contracts import TrainingSet
from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.quality import calibrate
from loyaltylens_core.sdk.testing import make_context, make_features
from loyaltylens_propensity_torch import TorchPropensitySettings, build


class ExampleStore:
    """Training examples whose label follows the features (learnable) or not (noise)."""

    def __init__(self, learnable: bool = True, n: int = 1500) -> None:
        rng = random.Random(0)
        feats, labels = [], []
        for i in range(n):
            rate = rng.random()
            recency = rng.uniform(0, 120)
            f = make_features(
                f"C{i:04d}", offer_redemption_rate=rate, recency_days=recency,
                engagement_score=rng.random(), frequency_30d=rng.randint(0, 10),
                tier=rng.choice(["bronze", "silver", "gold", "platinum"]),
                channel_preference=rng.choice(["in-store", "mobile", "web"]),
                as_of=dt.date(2026, 5, 1),
            )
            signal = 3 * rate - recency / 40
            label = int(signal + rng.gauss(0, 0.5) > 0) if learnable else rng.randint(0, 1)
            feats.append(f)
            labels.append(label)
        self.data = TrainingSet(features=tuple(feats), labels=tuple(labels), horizon_days=30, data_hash="test")

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        return self.data


def model_for(tmp_path, store=None, **settings):
    context = make_context(tmp_path, "propensity", "torch", components={"feature_store": store or ExampleStore()})
    return build(TorchPropensitySettings(**{"epochs": 6, **settings}), context)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = model_for(tmp_path_factory.mktemp("models"))
    model.prepare()
    return model


def test_first_prepare_trains_a_versioned_model_with_a_card(trained):
    assert trained.version == "propensity_v1"
    card = json.loads((trained.model_dir / "propensity_v1" / "card.json").read_text())
    assert card["numeric_features"][0] == "recency_days"
    assert card["label"].startswith("redeemed any offer in the 30 days after as_of")
    assert card["training_data_hash"] == "test"
    assert set(card["metrics"]) == {"train", "val", "test"}
    assert {"auc", "precision", "recall"} <= set(card["metrics"]["test"])
    assert sum(card["split"].values()) == 1500


def test_model_learns_a_learnable_signal(trained):
    assert trained.card["metrics"]["test"]["auc"] > 0.8


def test_noise_labels_give_chance_auc(tmp_path):
    model = model_for(tmp_path, ExampleStore(learnable=False))
    model.prepare()
    assert 0.35 < model.card["metrics"]["test"]["auc"] < 0.65


def test_predict_agrees_with_predict_many(trained):
    feats = [make_features(f"C{i}", offer_redemption_rate=i / 10, recency_days=60) for i in range(10)]
    one = [trained.predict(f).score for f in feats]
    many = [p.score for p in trained.predict_many(feats)]
    assert one == pytest.approx(many, abs=1e-6)
    assert one[9] > one[0]  # a higher redemption rate scores higher
    p = trained.predict(feats[0])
    assert p.model_version == "propensity_v1" and p.label == int(p.score >= 0.5)


def test_retraining_adds_a_version_and_pinning_loads_the_old_one(tmp_path):
    model = model_for(tmp_path, epochs=1)
    model.prepare()
    card = model.train()
    assert card["model_version"] == "propensity_v2"
    assert model.versions() == ["propensity_v1", "propensity_v2"]
    pinned = model_for(tmp_path, version="propensity_v1")
    pinned.prepare()
    assert pinned.version == "propensity_v1"


def test_missing_pinned_version_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="'propensity_v9' not found.*available: none"):
        model_for(tmp_path, version="propensity_v9").prepare()


def version_with_card(tmp_path, trained):
    """A model version directory holding the trained card and no weights yet."""
    target = tmp_path / "models" / "propensity_v1"
    target.mkdir(parents=True)
    (target / "card.json").write_text((trained.model_dir / "propensity_v1" / "card.json").read_text())
    return target


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, trained):
    target = version_with_card(tmp_path, trained)
    torch.save({"weights": Evil()}, target / "weights.pt")
    with pytest.raises(StageError, match="holds pickled objects"):
        model_for(tmp_path).prepare()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, trained):
    target = version_with_card(tmp_path, trained)
    (target / "weights.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(StageError, match="corrupt"):
        model_for(tmp_path).prepare()


def test_store_without_training_examples(tmp_path):
    with pytest.raises(StageError, match="cannot provide training examples"):
        model_for(tmp_path, store=object()).prepare()


def test_numpy_forward_pass_scores_exactly_as_the_torch_module(trained):
    """A run scores with numpy; training, export and the endpoints use torch: same numbers."""
    from loyaltylens_propensity_torch.features import categorical, raw_numeric

    rng = random.Random(3)
    feats = [
        make_features(f"C{i}", offer_redemption_rate=rng.random(), recency_days=rng.uniform(0, 400),
                      monetary_90d=rng.uniform(0, 2000), frequency_30d=rng.randint(0, 30),
                      engagement_score=rng.random(), tier=rng.choice(["bronze", "silver", "gold", "platinum"]),
                      channel_preference=rng.choice(["in-store", "mobile", "web"]))
        for i in range(300)
    ]
    numeric = torch.from_numpy(((raw_numeric(feats) - trained._mean) / trained._std).astype(np.float32))
    with torch.inference_mode():
        raw = torch.sigmoid(trained.torch_network()(numeric, torch.from_numpy(categorical(feats)))).numpy()
    expected = calibrate(raw, trained.card.get("calibration"))  # the card's calibrator, as a run applies it
    got = np.array([p.score for p in trained.predict_many(feats)])
    assert np.abs(got - expected).max() < 1e-5
    assert trained.predict(feats[7]).score == pytest.approx(float(expected[7]), abs=1e-5)


def test_scoring_a_trained_model_never_imports_torch(trained):
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from loyaltylens_core.sdk.testing import make_context, make_features\n"
        "from loyaltylens_propensity_torch import TorchPropensitySettings, build\n"
        f"m = build(TorchPropensitySettings(model_dir={str(trained.model_dir)!r}), make_context({str(trained.model_dir)!r}))\n"
        "m.prepare()\n"
        "print(m.predict(make_features()).score, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) == pytest.approx(trained.predict(make_features()).score, abs=1e-9)
    assert out[1] == "False"


def test_a_legacy_torch_checkpoint_still_loads_with_the_same_scores(tmp_path, trained):
    target = version_with_card(tmp_path, trained)
    torch.save(trained.torch_network().state_dict(), target / "weights.pt")
    legacy = model_for(tmp_path)
    legacy.prepare()
    assert legacy.predict(make_features()).score == pytest.approx(trained.predict(make_features()).score, abs=1e-7)


def test_corrupt_safetensors_checkpoint_is_a_clear_error(tmp_path, trained):
    target = version_with_card(tmp_path, trained)
    (target / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(StageError, match="corrupt"):
        model_for(tmp_path).prepare()


class TwoWindowStore(ExampleStore):
    """Two snapshot dates (so a latest window exists) and the true probability of each label."""

    def __init__(self) -> None:
        super().__init__()
        rng = random.Random(1)
        feats, labels, truth = [], [], []
        for i, f in enumerate(self.data.features):
            p = 1 / (1 + np.exp(-(3 * f.offer_redemption_rate - f.recency_days / 40)))
            feats.append(f.model_copy(update={"as_of": dt.date(2026, 5, 1) if i % 3 else dt.date(2026, 6, 1)}))
            labels.append(int(rng.random() < p))
            truth.append(float(p))
        self.data = TrainingSet(features=tuple(feats), labels=tuple(labels), horizon_days=30, data_hash="t2",
                                truth=tuple(truth))


def test_the_card_reports_quality_beside_the_oracle_on_the_latest_window(tmp_path):
    model = model_for(tmp_path, TwoWindowStore())
    card = model.train()
    assert card["evaluation"]["headline"] == "test_latest" and card["evaluation"]["latest_as_of"] == "2026-06-01"
    assert set(card["metrics"]) == {"train", "val", "test", "test_latest"}
    assert card["split"]["test_latest"] == 500  # every customer's latest snapshot, none trained on
    for key in ("auc", "pr_auc", "brier", "ece", "oracle_auc", "oracle_brier"):
        assert card[key] == card["metrics"]["test_latest"][key]
    assert 0.5 < card["auc"] <= card["oracle_auc"] + 0.05 and card["brier"] >= card["oracle_brier"] - 0.02
    assert card["calibration"]["method"] in ("temperature", "isotonic", "none")
    assert sum(row["n"] for row in card["reliability"]) == 500
    png = (model.model_dir / card["model_version"] / "reliability.png").read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize("calibration", [
    {"method": "temperature", "temperature": 1.7},
    {"method": "isotonic", "x": [0.0, 0.2, 0.5, 0.8, 1.0], "y": [0.05, 0.1, 0.45, 0.6, 0.9]},
])
def test_the_exported_model_returns_the_pipelines_calibrated_score(tmp_path, trained, calibration):
    """The endpoints (TorchScript through the SageMaker handler) and a run (numpy) apply the
    same calibrator: same number for the same customer."""
    from loyaltylens_core.sdk.serving import inference

    trained.card["calibration"] = calibration
    trained._memo.clear()
    try:
        spec = trained.export(tmp_path / "export")
        served = inference.model_fn(str(tmp_path / "export"))
        rng = random.Random(5)
        feats = [make_features(f"C{i}", offer_redemption_rate=rng.random(), recency_days=rng.uniform(0, 200),
                               engagement_score=rng.random()) for i in range(50)]
        body = json.dumps({"instances": [f.model_dump(mode="json") for f in feats]})
        got = inference.predict_fn(inference.input_fn(body, "application/json"), served)["predictions"]
        expected = [p.score for p in trained.predict_many(feats)]
        assert spec["model_version"] == trained.version
        assert np.abs(np.array([g["propensity_score"] for g in got]) - np.array(expected)).max() < 1e-5
        trained.card["calibration"] = None  # and calibration really changed the scores
        assert np.abs(np.array(expected) - trained._scores(feats)).max() > 1e-3
    finally:
        trained.card["calibration"] = None
        trained._memo.clear()
