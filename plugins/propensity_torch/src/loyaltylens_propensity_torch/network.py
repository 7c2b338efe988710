"""The tabular transformer (PyTorch), for training and TorchScript export.

Each feature becomes one token: numeric features through their own linear embedding,
categorical ones through an embedding table. A [CLS] token summarises the sequence
after a small transformer encoder, and an MLP turns it into one logit. Kept
TorchScript-friendly so the deploy targets can export it. Scoring in a run uses the
same weights through ``numpy_network`` instead, without importing torch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .features import _LOG_MASK, CATEGORICAL_FEATURES, NUMERIC_FEATURES


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


class ServingModule(nn.Module):
    """Raw features in, probability out: log1p, scaling and sigmoid baked in, so a
    serving container needs only this file and the feature order in spec.json."""

    def __init__(self, network: TabularTransformer, mean: Sequence[float], std: Sequence[float],
                 calibration: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        self.register_buffer("log_mask", torch.from_numpy(_LOG_MASK.copy()))
        # The model card's calibrator, baked in so every endpoint returns the pipeline's
        # score: a temperature on the logit, or isotonic knots interpolated linearly.
        method = (calibration or {}).get("method", "none")
        temperature = float(calibration["temperature"]) if method == "temperature" else 1.0
        knots = (calibration["x"], calibration["y"]) if method == "isotonic" else ([], [])
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float64))
        self.register_buffer("knots_x", torch.tensor(knots[0], dtype=torch.float64))
        self.register_buffer("knots_y", torch.tensor(knots[1], dtype=torch.float64))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_mask, torch.log1p(numeric.clamp(min=0)), numeric)
        x = (x - self.mean) / self.std
        p = torch.sigmoid(self.network(x, categorical).to(torch.float64) / self.temperature)
        if self.knots_x.numel() > 1:
            n = self.knots_x.numel()
            right = torch.searchsorted(self.knots_x, p.clamp(0.0, 1.0)).clamp(1, n - 1)
            x0, x1 = self.knots_x[right - 1], self.knots_x[right]
            y0, y1 = self.knots_y[right - 1], self.knots_y[right]
            w = ((p - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
            p = y0 + w * (y1 - y0)
        return p.to(torch.float32)
