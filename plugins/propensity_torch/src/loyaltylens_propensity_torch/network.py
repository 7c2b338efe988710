"""The tabular transformer and the feature encoding it reads.

Each feature becomes one token: numeric features through their own linear embedding,
categorical ones through an embedding table. A [CLS] token summarises the sequence
after a small transformer encoder, and an MLP turns it into one logit. Kept
TorchScript-friendly so the deploy targets can export it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from loyaltylens_core.contracts import CHANNELS, TIERS, CustomerFeatures

NUMERIC_FEATURES: tuple[str, ...] = (
    "recency_days", "frequency_30d", "monetary_90d", "offer_redemption_rate", "engagement_score",
)
LOG_FEATURES = frozenset({"recency_days", "frequency_30d", "monetary_90d"})
CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {"channel_preference": CHANNELS, "tier": TIERS}
_CATEGORY_INDEX = {name: {v: i for i, v in enumerate(values)} for name, values in CATEGORICAL_FEATURES.items()}
_LOG_MASK = np.array([name in LOG_FEATURES for name in NUMERIC_FEATURES])


class TabularTransformer(nn.Module):
    def __init__(self, d_model: int = 32, heads: int = 4, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        n_numeric = len(NUMERIC_FEATURES)
        self.num_weight = nn.Parameter(torch.randn(n_numeric, d_model) / math.sqrt(d_model))
        self.num_bias = nn.Parameter(torch.zeros(n_numeric, d_model))
        self.cat_embeddings = nn.ModuleList(
            [nn.Embedding(len(values), d_model) for values in CATEGORICAL_FEATURES.values()]
        )
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1)
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """(B, n_numeric) scaled floats, (B, n_categorical) indices -> (B,) logits."""
        batch = numeric.shape[0]
        tokens = numeric.unsqueeze(-1) * self.num_weight + self.num_bias
        cats = [emb(categorical[:, i]) for i, emb in enumerate(self.cat_embeddings)]
        x = torch.cat([self.cls.expand(batch, -1, -1), tokens, torch.stack(cats, dim=1)], dim=1)
        x = self.encoder(x)
        return self.head(x[:, 0]).squeeze(-1)


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


class ServingModule(nn.Module):
    """Raw features in, probability out: log1p, scaling and sigmoid baked in, so a
    serving container needs only this file and the feature order in spec.json."""

    def __init__(self, network: TabularTransformer, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        self.register_buffer("log_mask", torch.from_numpy(_LOG_MASK.copy()))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_mask, torch.log1p(numeric.clamp(min=0)), numeric)
        x = (x - self.mean) / self.std
        return torch.sigmoid(self.network(x, categorical))
