"""Offer vectors live in DuckDB; search runs in numpy over pre-normalised vectors.

Measured on the reference: numpy on normalised vectors beats DuckDB's
``array_cosine_similarity`` by 50-150x (0.008 ms vs 1.2 ms at 200 offers), so DuckDB is
the store and numpy the search. The index rebuilds itself when the catalogue or the
embedder changes (both are hashed into the index metadata).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import duckdb
import numpy as np

from loyaltylens_core.contracts import TIERS, Offer, OfferCandidate, RetrievalQuery
from loyaltylens_core.errors import StageError
from loyaltylens_core.offers import catalogue_fingerprint, load_catalogue, offer_text


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite values per row, best first."""
    k = min(k, similarity.shape[-1])
    part = np.argpartition(-similarity, k - 1, axis=-1)[..., :k]
    ordered = np.take_along_axis(similarity, part, axis=-1)
    return np.take_along_axis(part, np.argsort(-ordered, axis=-1, kind="stable"), axis=-1)


class DuckDBRetriever:
    def __init__(self, settings: Any, context: Any) -> None:
        self.settings = settings
        self.context = context
        self.path = settings.path or context.data_dir / "loyaltylens.duckdb"
        self.table = settings.table
        self.embedder = context.component("embedder")
        self.con: duckdb.DuckDBPyConnection | None = None
        self.offers: list[Offer] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.thresholds = np.zeros(0)
        self.tier_mask = np.zeros((len(TIERS), 0), dtype=bool)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.con = duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                raise StageError(
                    f"cannot open DuckDB file {self.path}"
                    + (" (locked by another process)" if "lock" in str(exc).lower() else f": {exc}"),
                    "wait for the other process or set [retriever.duckdb] path",
                ) from None
        return self.con

    def _catalogue_path(self) -> Path:
        if self.settings.catalogue is not None:
            return Path(self.settings.catalogue)
        return self.context.demo_data().offers_json

    def _fingerprint(self, offers: list[Offer]) -> str:
        return catalogue_fingerprint(offers, self.embedder)

    def _stored_fingerprint(self) -> str | None:
        con = self._connect()
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [f"{self.table}_meta"]
        ).fetchone()[0]
        if not exists:
            return None
        row = con.execute(f"SELECT fingerprint FROM {self.table}_meta").fetchone()
        return row[0] if row else None

    def prepare(self) -> None:
        offers = load_catalogue(self._catalogue_path())
        if self._stored_fingerprint() != self._fingerprint(offers):
            self.index(offers=offers)
        self._load()

    def index(self, rebuild: bool = True, offers: list[Offer] | None = None) -> int:
        """Embed the catalogue and store offers + vectors in one transaction."""
        offers = offers or load_catalogue(self._catalogue_path())
        con = self._connect()
        texts = [offer_text(o) for o in offers]
        batch = 32
        vectors = []
        with self.context.progress.task("Indexing offers", total=len(texts)) as advance:
            for start in range(0, len(texts), batch):
                vectors.append(np.asarray(self.embedder.embed(texts[start : start + batch]), dtype=np.float32))
                advance(len(texts[start : start + batch]))
        matrix = np.vstack(vectors)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
        dim = matrix.shape[1]
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                f"CREATE OR REPLACE TABLE {self.table} (offer_id VARCHAR PRIMARY KEY, offer JSON, "
                f"min_propensity_threshold DOUBLE, embedding FLOAT[{dim}])"
            )
            con.executemany(
                f"INSERT INTO {self.table} VALUES (?, ?, ?, ?)",
                [
                    (o.offer_id, o.model_dump_json(), o.min_propensity_threshold, v.tolist())
                    for o, v in zip(offers, matrix)
                ],
            )
            con.execute(
                f"CREATE OR REPLACE TABLE {self.table}_meta AS SELECT ? AS fingerprint, ? AS offers, now() AS built_at",
                [self._fingerprint(offers), len(offers)],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._load()
        return len(offers)

    def _load(self) -> None:
        rows = self._connect().execute(
            f"SELECT offer, embedding FROM {self.table} ORDER BY offer_id"
        ).fetchall()
        self.offers = [Offer.model_validate_json(offer) for offer, _ in rows]
        self.vectors = np.array([emb for _, emb in rows], dtype=np.float32)
        self.thresholds = np.array([o.min_propensity_threshold for o in self.offers])
        self.tier_mask = np.array([[tier in o.tiers for o in self.offers] for tier in TIERS])

    def _eligible(self, query: RetrievalQuery) -> np.ndarray:
        mask = np.ones(len(self.offers), dtype=bool)
        if query.max_threshold is not None:
            mask &= self.thresholds <= query.max_threshold
        if query.tier is not None:
            mask &= self.tier_mask[TIERS.index(query.tier)]
        return mask

    def _candidates(self, similarity: np.ndarray, eligible: np.ndarray, k: int) -> list[OfferCandidate]:
        count = int(eligible.sum())
        if count == 0:
            return []
        scored = np.where(eligible, similarity, -np.inf)
        return [
            OfferCandidate(offer=self.offers[i], similarity=float(similarity[i]), rank=rank + 1)
            for rank, i in enumerate(top_k(scored, min(k, count)).tolist())
        ]

    def retrieve(self, query: RetrievalQuery) -> list[OfferCandidate]:
        vector = np.asarray(self.embedder.embed([query.text]), dtype=np.float32)[0]
        return self._candidates(self.vectors @ vector, self._eligible(query), query.k)

    def retrieve_many(self, queries: Sequence[RetrievalQuery]) -> list[list[OfferCandidate]]:
        """All queries at once: one matmul, one mask, one partial sort."""
        if not queries:
            return []
        vectors = np.asarray(self.embedder.embed([q.text for q in queries]), dtype=np.float32)
        similarity = vectors @ self.vectors.T
        limits = np.array([np.inf if q.max_threshold is None else q.max_threshold for q in queries])
        eligible = self.thresholds[None, :] <= limits[:, None]
        tiers = [q.tier for q in queries]
        if any(t is not None for t in tiers):
            tier_rows = np.array([TIERS.index(t) if t is not None else -1 for t in tiers])
            by_tier = np.vstack([self.tier_mask, np.ones((1, len(self.offers)), dtype=bool)])
            eligible &= by_tier[tier_rows]
        k_max = max(q.k for q in queries)
        best = top_k(np.where(eligible, similarity, -np.inf), k_max)
        counts = eligible.sum(axis=1)
        out: list[list[OfferCandidate]] = []
        for i, q in enumerate(queries):
            take = min(q.k, int(counts[i]))
            out.append([
                OfferCandidate(offer=self.offers[j], similarity=float(similarity[i, j]), rank=r + 1)
                for r, j in enumerate(best[i, :take].tolist())
            ])
        return out
