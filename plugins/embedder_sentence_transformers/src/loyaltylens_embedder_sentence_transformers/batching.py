"""Batches of texts of similar token length, padded only to their own longest.

Why: a transformer's cost is batch size x the longest text in the batch; padding is paid
for like real tokens. Catalogue texts run 24-40 tokens, so batches cut in input order pad
most rows by several tokens. Sorting by length first measured 331 -> 464 texts/s for
bfloat16 MiniLM on 2 cores (2,048 catalogue texts, batches of 64).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np


def unpadded_tokenizer(model_path: Path) -> Any:
    """The model's tokenizer, truncating at its ``max_seq_length`` and never padding:
    ``length_sorted_batches`` pads each batch itself."""
    from tokenizers import Tokenizer

    try:
        max_length = int(json.loads((model_path / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        max_length = 256
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode_sorted(tokenizer: Any, texts: Sequence[str], batch_size: int,
                  hidden_of: Callable[[dict[str, np.ndarray]], np.ndarray]) -> np.ndarray:
    """One L2-normalised float32 row per text, in ``texts``' order: the transformer
    (``hidden_of``: a batch's inputs -> last hidden state) over length-sorted batches, then
    the model's mean pooling and normalisation."""
    out: np.ndarray | None = None
    for rows, inputs in length_sorted_batches(tokenizer, texts, batch_size):
        vectors = mean_pooled(hidden_of(inputs), inputs["attention_mask"])
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[rows] = vectors
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


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
