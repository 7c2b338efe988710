"""The feature encoding the propensity model reads, and its metrics: no torch here, so
scoring with the numpy forward pass never imports it."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from loyaltylens_core.contracts import CHANNELS, TIERS, CustomerFeatures

NUMERIC_FEATURES: tuple[str, ...] = (
    "recency_days", "frequency_30d", "monetary_90d", "offer_redemption_rate", "engagement_score",
)
LOG_FEATURES = frozenset({"recency_days", "frequency_30d", "monetary_90d"})
CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {"channel_preference": CHANNELS, "tier": TIERS}
_CATEGORY_INDEX = {name: {v: i for i, v in enumerate(values)} for name, values in CATEGORICAL_FEATURES.items()}
_LOG_MASK = np.array([name in LOG_FEATURES for name in NUMERIC_FEATURES])



def raw_numeric(features: Sequence[CustomerFeatures]) -> np.ndarray:
    """Numeric features with log1p on the heavy-tailed ones (before scaling)."""
    values = np.array(
        [[getattr(f, name) for name in NUMERIC_FEATURES] for f in features], dtype=np.float64
    ).reshape(len(features), len(NUMERIC_FEATURES))
    values[:, _LOG_MASK] = np.log1p(values[:, _LOG_MASK])
    return values


def categorical(features: Sequence[CustomerFeatures]) -> np.ndarray:
    return np.array(
        [[_CATEGORY_INDEX[name][getattr(f, name)] for name in CATEGORICAL_FEATURES] for f in features],
        dtype=np.int64,
    ).reshape(len(features), len(CATEGORICAL_FEATURES))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via ranks (Mann-Whitney U), ties averaged."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    tp = float((predicted & labels).sum())
    fp = float((predicted & ~labels).sum())
    fn = float((~predicted & labels).sum())
    return {
        "auc": roc_auc(labels, scores),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": float((predicted == labels).mean()),
        "positive_rate": float(labels.mean()),
        "n": float(len(labels)),
    }
