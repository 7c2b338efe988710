"""Batches of texts of similar token length, padded only to their own longest.

Why: a transformer's cost is batch size x the longest text in the batch; padding is paid
for like real tokens. Catalogue texts run 24-40 tokens, so batches cut in input order pad
most rows by several tokens. Sorting by length first measured 331 -> 464 texts/s for
bfloat16 MiniLM on 2 cores (2,048 catalogue texts, batches of 64).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np


def length_sorted_batches(tokenizer: Any, texts: Sequence[str], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(rows, inputs)``: which of ``texts`` a batch holds, and its int64
    ``input_ids`` / ``attention_mask`` / ``token_type_ids``. ``tokenizer`` must not pad
    (it truncates as the model needs); padded positions are masked, so their id is moot."""
    encodings = tokenizer.encode_batch(list(texts))
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(lengths[rows].max())
        inputs = {name: np.zeros((len(rows), width), dtype=np.int64)
                  for name in ("input_ids", "attention_mask", "token_type_ids")}
        for row, index in enumerate(rows):
            encoding, length = encodings[index], lengths[index]
            inputs["input_ids"][row, :length] = encoding.ids
            inputs["attention_mask"][row, :length] = encoding.attention_mask
            inputs["token_type_ids"][row, :length] = encoding.type_ids
        yield rows, inputs


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The model's Pooling (mean over real tokens) and Normalize modules, in float32."""
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden.astype(np.float32) * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
