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


def _linear(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(rows, in) @ (in, out) + bias: one 2-D product, the bias added in place."""
    out = x @ weight_t
    out += bias
    return out


def _layer_norm_(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Layer norm over the last axis of a 2-D array, in place (no temporaries the size of x)."""
    x -= x.mean(axis=-1, keepdims=True)
    scale = np.einsum("ij,ij->i", x, x)[:, None] / np.float32(x.shape[-1])
    scale += LAYER_NORM_EPS
    np.sqrt(scale, out=scale)
    x /= scale
    x *= weight
    x += bias
    return x


def _softmax_(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class NumpyTabularTransformer:
    """``TabularTransformer.forward`` over a state dict of numpy arrays. Tokens are kept
    as one (customers x tokens, d_model) matrix, so every linear layer is a single 2-D
    product against a weight transposed once here; the rest works in place (20% faster
    than batched 3-D products and fresh temporaries for a batch of 8,192)."""

    def __init__(self, state: Mapping[str, np.ndarray], heads: int, layers: int) -> None:
        self.w = {name: np.asarray(value, dtype=np.float32) for name, value in state.items()}
        self.wt = {name: np.ascontiguousarray(value.T) for name, value in self.w.items()
                   if value.ndim == 2 and name.endswith("weight") and not name.startswith("cat_embeddings.")}
        self.heads = heads
        self.layers = layers
        self.d_model = self.w["cls"].shape[-1]
        d = self.d_model
        attention = [name.rsplit(".", 1)[0] for name in self.wt if name.endswith(".in_proj_weight")]
        self.wt_q = {prefix: np.ascontiguousarray(self.wt[f"{prefix}.in_proj_weight"][:, :d]) for prefix in attention}
        self.wt_kv = {prefix: np.ascontiguousarray(self.wt[f"{prefix}.in_proj_weight"][:, d:]) for prefix in attention}
        self.categories = sorted(
            int(name.split(".")[1]) for name in self.w if name.startswith("cat_embeddings.")
        )

    def _attention(self, x: np.ndarray, batch: int, length: int, prefix: str, cls_only: bool = False) -> np.ndarray:
        """Self-attention over (batch x length, d) tokens; with ``cls_only`` just the CLS
        token's output, (batch, d): keys and values still come from every token."""
        d = self.d_model
        head_dim = d // self.heads
        bias = self.w[f"{prefix}.in_proj_bias"]
        if cls_only:
            kv = _linear(x, self.wt_kv[prefix], bias[d:]).reshape(batch, length, 2, self.heads, head_dim)
            k, v = kv.transpose(2, 0, 3, 1, 4)  # (batch, heads, length, head_dim) each
            cls = x.reshape(batch, length, d)[:, 0]
            q = _linear(cls, self.wt_q[prefix], bias[:d]).reshape(batch, self.heads, 1, head_dim)
            queries = 1
        else:
            qkv = _linear(x, self.wt[f"{prefix}.in_proj_weight"], bias).reshape(batch, length, 3, self.heads, head_dim)
            qkv = qkv.transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, length, head_dim)
            queries = length
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= np.float32(1 / np.sqrt(head_dim))
        out = (_softmax_(scores) @ v).transpose(0, 2, 1, 3).reshape(batch * queries, d)
        return _linear(out, self.wt[f"{prefix}.out_proj.weight"], self.w[f"{prefix}.out_proj.bias"])

    def logits(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """(B, n_numeric) scaled floats, (B, n_categorical) indices -> (B,) logits.

        Only the CLS token reaches the head, so the last layer computes everything after
        its keys and values for that token alone (1 row per customer instead of 8)."""
        w, wt = self.w, self.wt
        numeric = np.asarray(numeric, dtype=np.float32)
        batch = numeric.shape[0]
        tokens = numeric[:, :, None] * w["num_weight"] + w["num_bias"]
        cats = [w[f"cat_embeddings.{i}.weight"][categorical[:, i]] for i in self.categories]
        x = np.concatenate(
            [np.broadcast_to(w["cls"].reshape(1, 1, -1), (batch, 1, self.d_model)), tokens, np.stack(cats, axis=1)],
            axis=1,
        )
        length = x.shape[1]
        x = x.reshape(batch * length, self.d_model)
        for i in range(self.layers):
            p = f"encoder.layers.{i}"
            last = i == self.layers - 1
            h = self._attention(x, batch, length, f"{p}.self_attn", cls_only=last)
            h += x.reshape(batch, length, self.d_model)[:, 0] if last else x
            x = _layer_norm_(h, w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"])
            hidden = _linear(x, wt[f"{p}.linear1.weight"], w[f"{p}.linear1.bias"])
            np.maximum(hidden, 0, out=hidden)
            h = _linear(hidden, wt[f"{p}.linear2.weight"], w[f"{p}.linear2.bias"])
            h += x
            x = _layer_norm_(h, w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"])
        cls = _layer_norm_(x, w["head.0.weight"], w["head.0.bias"])  # (batch, d): the CLS rows, owned here
        hidden = np.maximum(_linear(cls, wt["head.1.weight"], w["head.1.bias"]), 0)
        return _linear(hidden, wt["head.3.weight"], w["head.3.bias"]).reshape(batch)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
