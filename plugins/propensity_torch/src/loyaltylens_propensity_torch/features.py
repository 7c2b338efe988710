"""The feature encoding the propensity model reads, and its metrics: no torch here, so
scoring with the numpy forward pass never imports it."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from loyaltylens_core.kernel.contracts import CATEGORICAL_FEATURES, NUMERIC_FEATURES, CustomerFeatures

__all__ = ["CATEGORICAL_FEATURES", "LOG_FEATURES", "NUMERIC_FEATURES"]  # the model's inputs, from the contract

LOG_FEATURES = frozenset({"recency_days", "frequency_30d", "monetary_90d"})
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
