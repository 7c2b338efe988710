"""Segment models: one propensity model per value of a categorical feature (``segment_by``).

Segments of a loyalty programme behave differently (a platinum member redeems for other
reasons than a bronze one), so a model of their own can rank them better than one model for
everybody. Each segment's versions live in their own ``ModelStore`` under
``<model_dir>/segments/<feature>=<value>/``, with their own champion, so ``promote`` and
``rollback --segment`` act on one segment without touching the others. A segment with fewer
training examples than ``min_segment_size`` gets no model: the global model, trained on
everybody, scores it. Every segment card carries the global model's metrics on the same
held-out rows, and by default (``segment_must_beat_global``) a segment's model serves only
where it beats them: splitting the data must not quietly make scores worse.
"""

from __future__ import annotations

from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from loyaltylens_core.kernel.contracts import CATEGORICAL_FEATURES, CustomerFeatures, TrainingSet
from loyaltylens_core.sdk import quality
from loyaltylens_core.sdk.model_versions import ModelStore, headline

if TYPE_CHECKING:
    from .model import TorchPropensityModel

SEGMENTS_DIR = "segments"
HEADLINE_KEYS = ("auc", "ece", "brier", "oracle_auc", "oracle_ece")


def segment_name(feature: str, value: str) -> str:
    return f"{feature}={value}"


def stores(model: TorchPropensityModel) -> dict[str, ModelStore]:
    """Every segment that has a model directory ("tier=gold" -> its versions)."""
    root = model.model_dir / SEGMENTS_DIR
    if not root.is_dir():
        return {}
    return {path.name: ModelStore(path, model.models.pattern, model.models.prefix)
            for path in sorted(root.iterdir()) if path.is_dir() and "=" in path.name}


def load_serving(model: TorchPropensityModel) -> dict[str, TorchPropensityModel]:
    """The serving version (champion, else newest) of each segment of ``segment_by``,
    keyed by the feature value. Segments of another feature (an earlier ``segment_by``)
    are left on disk and not loaded."""
    feature = model.settings.segment_by
    loaded: dict[str, TorchPropensityModel] = {}
    for name, store in stores(model).items():
        store_feature, _, value = name.partition("=")
        if store_feature != feature or value not in CATEGORICAL_FEATURES[feature]:
            continue
        version = store.serving()
        if version is None:
            continue
        segment_model = _segment_model(model, name)
        segment_model.load(version)
        if model.settings.segment_must_beat_global and not beats_global(segment_model.card):
            continue
        loaded[value] = segment_model
    return loaded


def beats_global(card: dict[str, Any]) -> bool:
    """Whether a segment's model ranks its segment better than the global model trained
    with it, on the segment's held-out rows (higher AUC). AUC alone: a small segment's
    calibration error is measured on a few hundred rows, noise of several points (measured
    0.10-0.16 on 500 rows where the global model's was 0.09-0.11), so it is reported on the
    card and in `train`, not used to refuse a model that ranks far better."""
    own, baseline = headline(card), card.get("global_model", {}).get("metrics", {})
    return bool(own.get("auc", 0) > baseline.get("auc", 1))


def _segment_model(model: TorchPropensityModel, name: str) -> TorchPropensityModel:
    return type(model)(model.settings, model.context, model_dir=model.model_dir / SEGMENTS_DIR / name, segment=name)


def subset(data: TrainingSet, feature: str, value: str) -> TrainingSet:
    """The examples of one segment, with the labels and oracle truth that go with them."""
    rows = [i for i, f in enumerate(data.features) if getattr(f, feature) == value]
    return TrainingSet(
        features=tuple(data.features[i] for i in rows),
        labels=tuple(data.labels[i] for i in rows),
        horizon_days=data.horizon_days,
        data_hash=f"{data.data_hash}:{segment_name(feature, value)}",
        truth=None if data.truth is None else tuple(data.truth[i] for i in rows),
    )


def global_metrics_on(global_model: TorchPropensityModel, data: TrainingSet) -> dict[str, Any]:
    """The global model's quality on a segment's held-out headline rows (the same rows the
    segment model's card reports on), for the comparison on every segment card."""
    rows = quality.evaluation_rows([f.customer_id for f in data.features], [f.as_of for f in data.features])
    window = "test_latest" if len(rows.get("test_latest", ())) else "test"
    picked = rows[window]
    scores = global_model.own_scores([data.features[i] for i in picked])
    labels = np.asarray(data.labels, dtype=np.float64)[picked]
    truth = None if data.truth is None else np.asarray(data.truth)[picked]
    return {"window": window, **quality.quality(labels, scores, truth, global_model.settings.threshold)}


def train_all(model: TorchPropensityModel, data: TrainingSet, global_version: str) -> list[dict[str, Any]]:
    """A new version for every segment with at least ``min_segment_size`` examples; one
    row per segment value, saying which model will score it and how it compares."""
    feature = model.settings.segment_by
    assert feature is not None
    minimum = model.settings.min_segment_size
    global_model = type(model)(model.settings, model.context)
    global_model.load(global_version)
    rows: list[dict[str, Any]] = []
    for value in CATEGORICAL_FEATURES[feature]:
        name = segment_name(feature, value)
        part = subset(data, feature, value)
        if len(part.features) < minimum:
            rows.append({"segment": name, "examples": len(part.features), "model_version": None,
                         "scored_by": "global", "reason": f"{len(part.features)} examples < min_segment_size {minimum}"})
            continue
        baseline = global_metrics_on(global_model, part)
        card = _segment_model(model, name).fit(
            part, {"segment_by": feature, "global_model": {"model_version": global_version, "metrics": baseline}})
        rows.append({
            "segment": name, "examples": len(part.features), "model_version": card["model_version"],
            "role": card["role"], "beats_global": beats_global(card),
            **{key: value for key, value in headline(card).items() if key in HEADLINE_KEYS},
            "global_auc": baseline.get("auc"), "global_ece": baseline.get("ece"),
        })
    return rows


def routed_scores(model: TorchPropensityModel, features: Sequence[CustomerFeatures]) -> np.ndarray:
    """Each customer scored by its segment's model, the rest by ``model``: one forward pass
    per segment present in the batch."""
    feature = model.settings.segment_by or ""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(features):
        groups.setdefault(getattr(f, feature), []).append(i)
    out = np.empty(len(features), dtype=np.float64)
    for value, rows in groups.items():
        scorer = model.segment_models.get(value, model)
        out[rows] = scorer.own_scores([features[i] for i in rows])
    return out
