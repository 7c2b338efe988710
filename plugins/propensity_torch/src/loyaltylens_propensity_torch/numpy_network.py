"""The tabular transformer's forward pass in numpy, from the same weights as the torch
module (eval mode: no dropout).

Why: scoring one customer is a few dozen tiny matrix products. Importing torch to do
them costs 1.3-1.7 s of a CLI run's wall time on this project's 2-core machines, and
torch's per-op dispatch costs more than the arithmetic. Training and export still use
torch; ``tests`` prove both passes give the same scores.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

LAYER_NORM_EPS = 1e-5


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    return x / x.sum(axis=-1, keepdims=True)


class NumpyTabularTransformer:
    """``TabularTransformer.forward`` over a state dict of numpy arrays."""

    def __init__(self, state: Mapping[str, np.ndarray], heads: int, layers: int) -> None:
        self.w = {name: np.asarray(value, dtype=np.float32) for name, value in state.items()}
        self.heads = heads
        self.layers = layers
        self.d_model = self.w["cls"].shape[-1]
        self.categories = sorted(
            int(name.split(".")[1]) for name in self.w if name.startswith("cat_embeddings.")
        )

    def _attention(self, x: np.ndarray, prefix: str) -> np.ndarray:
        batch, length, d = x.shape
        head_dim = d // self.heads
        qkv = x @ self.w[f"{prefix}.in_proj_weight"].T + self.w[f"{prefix}.in_proj_bias"]
        qkv = qkv.reshape(batch, length, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, length, head_dim)
        weights = _softmax(q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim)))
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, d)
        return out @ self.w[f"{prefix}.out_proj.weight"].T + self.w[f"{prefix}.out_proj.bias"]

    def logits(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """(B, n_numeric) scaled floats, (B, n_categorical) indices -> (B,) logits."""
        w = self.w
        numeric = np.asarray(numeric, dtype=np.float32)
        batch = numeric.shape[0]
        tokens = numeric[:, :, None] * w["num_weight"] + w["num_bias"]
        cats = [w[f"cat_embeddings.{i}.weight"][categorical[:, i]] for i in self.categories]
        x = np.concatenate(
            [np.broadcast_to(w["cls"].reshape(1, 1, -1), (batch, 1, self.d_model)), tokens, np.stack(cats, axis=1)],
            axis=1,
        )
        for i in range(self.layers):
            p = f"encoder.layers.{i}"
            x = _layer_norm(x + self._attention(x, f"{p}.self_attn"), w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"])
            hidden = np.maximum(x @ w[f"{p}.linear1.weight"].T + w[f"{p}.linear1.bias"], 0)
            x = _layer_norm(
                x + hidden @ w[f"{p}.linear2.weight"].T + w[f"{p}.linear2.bias"],
                w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"],
            )
        cls = _layer_norm(x[:, 0], w["head.0.weight"], w["head.0.bias"])
        hidden = np.maximum(cls @ w["head.1.weight"].T + w["head.1.bias"], 0)
        return (hidden @ w["head.3.weight"].T + w["head.3.bias"]).reshape(batch)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
