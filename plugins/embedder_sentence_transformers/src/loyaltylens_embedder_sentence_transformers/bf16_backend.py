"""The same model in bfloat16 through torch, for bulk encoding on CPUs that compute in it.

Why: fp32 MiniLM is compute-bound here (~265 texts/s through ONNX Runtime on 2 cores in
length-sorted batches, close to what two AVX-512 cores can multiply). CPUs with native
bf16 dot products (AVX512_BF16, AMX) do twice the multiply-adds per instruction: ~440
texts/s (2,048 catalogue texts, batches of 64; this shared VM varies by up to a third),
vectors at a cosine of >= 0.9999 to the fp32 reference (the bar is 0.999; measured
minimum 0.99990). int8 (ONNX Runtime dynamic quantisation, also measured) was faster
still but fell to 0.986. Two worker processes on one thread each were tried and measured
no faster than one process on two threads (interleaved runs: 338-366 vs 315-371/s).

Loading it imports torch and transformers (~2-3 s), so the embedder switches to it only
once a process has a bulk of texts to encode (a cold index); a few new texts stay on
ONNX Runtime.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .batching import encode_sorted, unpadded_tokenizer


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Linux: the flags in /proc/cpuinfo).
    Elsewhere torch would emulate it, slower than fp32: say no."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return False


class Bf16SentenceEncoder:
    """``encode(texts)`` -> L2-normalised float32 rows: transformer in bfloat16, mean
    pooling and normalisation in float32 (the model's own three modules)."""

    def __init__(self, model_path: Path) -> None:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.tokenizer = unpadded_tokenizer(model_path)
        self.torch = torch
        self.model: Any = AutoModel.from_pretrained(str(model_path), local_files_only=True,
                                                    dtype=torch.bfloat16).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        torch = self.torch

        def hidden_of(inputs: dict[str, np.ndarray]) -> np.ndarray:
            arrays = {name: torch.from_numpy(array) for name, array in inputs.items()}
            return self.model(**arrays).last_hidden_state.float().numpy()  # type: ignore[no-any-return]

        with torch.inference_mode():
            return encode_sorted(self.tokenizer, texts, batch_size, hidden_of)
