"""Offers in Weaviate: created and indexed on first use, searched with near_vector.

The collection holds one object per offer (uuid5 of the offer id) with our own vectors
(``self_provided``), the offer as JSON, and the two properties the filters need. Its
description carries a fingerprint of catalogue + embedder, so a changed catalogue or a
new embedding model re-indexes by itself. The threshold filter and the pipeline's
fallback behave exactly as with the embedded retriever; when Weaviate is unreachable,
``fallback = "duckdb"`` answers from the embedded retriever and says so in the result.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence, TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
import weaviate
from weaviate.classes.config import Configure, DataType, Property, VectorDistances
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import WeaviateBaseError

from loyaltylens_core.kernel.contracts import Offer, OfferCandidate, RetrievalQuery
from loyaltylens_core.sdk.demo import demo_data
from loyaltylens_core.kernel.errors import ConfigError, StageError
from loyaltylens_core.sdk.offers import catalogue_fingerprint, content_hash, load_catalogue, offer_text

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_retriever_weaviate import WeaviateRetrieverSettings

NAMESPACE = uuid.UUID("5b1c1f0e-6a0b-4c47-9a55-6c6f79616c74")


class DaemonPool:
    """A few daemon worker threads. Unlike ThreadPoolExecutor, a search stuck in the
    client's retry loop neither blocks the caller past its deadline nor the process exit."""

    def __init__(self, size: int) -> None:
        self.tasks: queue.Queue[Any] = queue.Queue()
        for _ in range(size):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            index, task, done = self.tasks.get()
            try:
                done.put((index, True, task()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                done.put((index, False, exc))

    def run(self, tasks: list[Callable[[], Any]], stall_timeout: float) -> list[Any]:
        """Results in task order; TimeoutError if no task finishes for ``stall_timeout`` s."""
        done: queue.Queue[Any] = queue.Queue()
        for index, task in enumerate(tasks):
            self.tasks.put((index, task, done))
        results: list[Any] = [None] * len(tasks)
        for _ in tasks:
            try:
                index, ok, value = done.get(timeout=stall_timeout)
            except queue.Empty:
                raise TimeoutError(f"no answer within {stall_timeout:g} s") from None
            if not ok:
                raise value
            results[index] = value
        return results


class WeaviateRetriever:
    def __init__(self, settings: WeaviateRetrieverSettings, context: StageContext) -> None:
        self.settings = settings
        self.context = context
        self.embedder = context.component("embedder")
        self.fallback_reason: str | None = None
        self.last_index: dict[str, Any] = {}
        self._fallback: Any = None
        self.where = settings.cluster_url or settings.url
        self.client: Any = None
        self.collection: Any = None
        self.offers: dict[str, Offer] = {}
        self._pool = DaemonPool(settings.search_threads)
        try:
            self.client = self._connect()
        except StageError:
            if not settings.fallback:
                raise
            self._use_fallback("weaviate_unreachable")

    # --- connection -----------------------------------------------------------------

    def _connect(self) -> Any:
        s = self.settings
        key = s.api_key.get_secret_value() if s.api_key else os.environ.get("WEAVIATE_API_KEY")
        auth = Auth.api_key(key) if key else None
        extra = AdditionalConfig(timeout=Timeout(init=s.timeout_s, query=s.timeout_s, insert=max(s.timeout_s, 60)))
        try:
            if s.cluster_url:
                client = weaviate.connect_to_weaviate_cloud(
                    cluster_url=s.cluster_url, auth_credentials=auth, additional_config=extra,
                    skip_init_checks=not s.init_checks)
            else:
                parsed = urlparse(s.url)
                if parsed.scheme not in ("http", "https") or not parsed.hostname:
                    raise ConfigError(f"[retriever.weaviate] url {s.url!r} is not an http(s) URL",
                                      "e.g. http://localhost:8080")
                secure = parsed.scheme == "https"
                client = weaviate.connect_to_custom(
                    http_host=parsed.hostname, http_port=parsed.port or (443 if secure else 80), http_secure=secure,
                    grpc_host=parsed.hostname, grpc_port=s.grpc_port, grpc_secure=secure,
                    auth_credentials=auth, additional_config=extra, skip_init_checks=not s.init_checks)
            if not client.is_ready():
                client.close()
                raise StageError(f"Weaviate at {self.where} is not ready", "wait for it to start, then retry")
            return client
        except WeaviateBaseError as exc:
            raise self._down(exc) from None

    def _down(self, exc: Exception) -> StageError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        hint = ("check that Weaviate is running and that url/grpc_port"
                f" ({self.settings.grpc_port}) are right, or set [retriever.weaviate] fallback = \"duckdb\"")
        if "401" in first or "nauthenticated" in first or "anonymous" in first:
            hint = "check WEAVIATE_API_KEY or [retriever.weaviate] api_key"
        return StageError(f"Weaviate at {self.where} is unreachable: {first}", hint)

    def _use_fallback(self, reason: str) -> None:
        self._fallback = self.context.fallback("retriever", self.settings.fallback)
        self.fallback_reason = reason

    # --- indexing -------------------------------------------------------------------

    def _catalogue_path(self) -> Path:
        if self.settings.catalogue is not None:
            return Path(self.settings.catalogue)
        return demo_data(self.context).offers_json

    def _fingerprint(self, offers: list[Offer]) -> str:
        return catalogue_fingerprint(offers, self.embedder)

    def prepare(self) -> None:
        if self._fallback is not None:
            return
        offers = load_catalogue(self._catalogue_path())
        self.offers = {o.offer_id: o for o in offers}
        try:
            self.index(offers=offers)
        except WeaviateBaseError as exc:
            raise self._down(exc) from None

    def _current(self, offers: list[Offer]) -> bool:
        """Does the collection already hold exactly this catalogue, embedded by this embedder?"""
        description = f"loyaltylens offers fingerprint={self._fingerprint(offers)}"
        existing = self.client.collections.list_all(simple=True).get(self.settings.collection)
        return existing is not None and existing.description == description

    def index(self, rebuild: bool = False, offers: list[Offer] | None = None) -> int:
        """Index the catalogue: nothing to do when the collection already holds it (same
        offers, same embedder); only new and changed offers embedded and upserted, and
        removed ones deleted, when it holds an earlier version (objects carry the same
        content hash as the DuckDB retriever's); the collection recreated with every offer
        when ``rebuild=True`` or it predates content hashes. Sets ``last_index``."""
        offers = offers or load_catalogue(self._catalogue_path())
        name = self.settings.collection
        if not rebuild and self._current(offers):
            self.offers = {o.offer_id: o for o in offers}
            self.collection = self.client.collections.get(name)
            self.last_index = {"offers": len(offers), "embedded": 0, "kept": len(offers)}
            return len(offers)
        stored = None if rebuild else self._stored(name)
        if stored is not None:
            return self._update(offers, stored)
        vectors = np.asarray(self.embedder.embed([offer_text(o) for o in offers]), dtype=np.float32)
        with self.context.progress.task("Indexing offers in Weaviate", total=len(offers)) as advance:
            if self.client.collections.exists(name):
                self.client.collections.delete(name)
            collection = self.client.collections.create(
                name,
                description=f"loyaltylens offers fingerprint={self._fingerprint(offers)}",
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
                properties=[
                    Property(name="offer_id", data_type=DataType.TEXT),
                    Property(name="content_hash", data_type=DataType.TEXT),
                    Property(name="payload", data_type=DataType.TEXT, index_searchable=False),
                    Property(name="min_propensity_threshold", data_type=DataType.NUMBER),
                    Property(name="tiers", data_type=DataType.TEXT_ARRAY),
                ],
            )
            self._upsert(collection, offers, vectors)
            advance(len(offers))
        self.offers = {o.offer_id: o for o in offers}
        self.collection = collection
        self.last_index = {"offers": len(offers), "embedded": len(offers), "kept": 0}
        return len(offers)

    def _objects(self, offers: Sequence[Offer], vectors: np.ndarray) -> list[Any]:
        from weaviate.classes.data import DataObject

        return [
            DataObject(
                uuid=uuid.uuid5(NAMESPACE, o.offer_id),
                properties={"offer_id": o.offer_id, "content_hash": content_hash(o, self.embedder),
                            "payload": o.model_dump_json(), "min_propensity_threshold": o.min_propensity_threshold,
                            "tiers": list(o.tiers)},
                vector=v.tolist(),
            )
            for o, v in zip(offers, vectors)
        ]

    def _upsert(self, collection: Any, offers: Sequence[Offer], vectors: np.ndarray) -> None:
        """Batch-import offers; an object with the same uuid (uuid5 of the offer id) is replaced."""
        result = collection.data.insert_many(self._objects(offers, vectors))
        if result.has_errors:
            first = next(iter(result.errors.values()))
            raise StageError(f"Weaviate rejected {len(result.errors)} offers: {first.message}",
                             "check the collection schema")

    def _stored(self, name: str) -> dict[str, tuple[str, str]] | None:
        """offer_id -> (content hash, payload) of the collection's objects, or None when there
        is no collection or it predates content hashes (then it is rebuilt)."""
        existing = self.client.collections.list_all(simple=False).get(name)
        if existing is None or "content_hash" not in {p.name for p in existing.properties}:
            return None
        collection = self.client.collections.get(name)
        return {
            obj.properties["offer_id"]: (obj.properties.get("content_hash"), obj.properties.get("payload"))
            for obj in collection.iterator(return_properties=["offer_id", "content_hash", "payload"])
        }

    def _update(self, offers: list[Offer], stored: dict[str, tuple[str, str]]) -> int:
        """Upsert the new and changed offers, delete the removed ones, then record the new
        fingerprint: a crash part-way leaves an old fingerprint, so the next start redoes it."""
        collection = self.client.collections.get(self.settings.collection)
        todo = [o for o in offers if stored.get(o.offer_id) != (content_hash(o, self.embedder), o.model_dump_json())]
        removed = sorted(set(stored) - {o.offer_id for o in offers})
        with self.context.progress.task(f"Updating {len(todo)} offers in Weaviate", total=len(todo) or 1) as advance:
            if todo:
                vectors = np.asarray(self.embedder.embed([offer_text(o) for o in todo]), dtype=np.float32)
                self._upsert(collection, todo, vectors)
            for start in range(0, len(removed), 5000):  # a delete matches at most QUERY_MAXIMUM_RESULTS
                collection.data.delete_many(where=Filter.by_property("offer_id").contains_any(removed[start:start + 5000]))
            collection.config.update(description=f"loyaltylens offers fingerprint={self._fingerprint(offers)}")
            advance(len(todo) or 1)
        self.offers = {o.offer_id: o for o in offers}
        self.collection = collection
        self.last_index = {"offers": len(offers), "embedded": len(todo), "kept": len(offers) - len(todo),
                           "removed": len(removed)}
        return len(offers)

    # --- search ---------------------------------------------------------------------

    @staticmethod
    def _filters(query: RetrievalQuery) -> Any:
        parts = []
        if query.max_threshold is not None:
            parts.append(Filter.by_property("min_propensity_threshold").less_or_equal(query.max_threshold))
        if query.tier is not None:
            parts.append(Filter.by_property("tiers").contains_any([query.tier]))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else Filter.all_of(parts)

    def _search(self, query: RetrievalQuery, vector: np.ndarray) -> list[OfferCandidate]:
        reply = self.collection.query.near_vector(
            near_vector=vector.tolist(), limit=query.k, filters=self._filters(query),
            return_metadata=MetadataQuery(distance=True), return_properties=["offer_id", "payload"],
        )
        out = []
        for rank, obj in enumerate(reply.objects, start=1):
            offer = self.offers.get(obj.properties["offer_id"]) or Offer.model_validate_json(obj.properties["payload"])
            out.append(OfferCandidate(offer=offer, similarity=1.0 - float(obj.metadata.distance), rank=rank))
        return out

    def offers_by_id(self, offer_ids: Sequence[str]) -> dict[str, Offer]:
        """Catalogue offers by id (a placement's fallback offer), from the catalogue loaded
        at prepare (the embedded fallback's, while the server is down)."""
        if self._fallback is not None and not self.offers:
            found: dict[str, Offer] = self._fallback.offers_by_id(offer_ids)
            return found
        return {i: self.offers[i] for i in offer_ids if i in self.offers}

    def retrieve(self, query: RetrievalQuery) -> list[OfferCandidate]:
        return self.retrieve_many([query])[0]

    def _from_fallback(self, queries: Sequence[RetrievalQuery]) -> list[list[OfferCandidate]]:
        many = getattr(self._fallback, "retrieve_many", None)
        return many(queries) if callable(many) else [self._fallback.retrieve(q) for q in queries]

    def retrieve_many(self, queries: Sequence[RetrievalQuery]) -> list[list[OfferCandidate]]:
        """One embedding batch; identical queries searched once; searches in parallel.

        The v4 client retries an unavailable gRPC server for about a minute before it
        gives up; a search that makes no progress for ``timeout_s`` counts as an outage.
        """
        if self._fallback is not None:
            return self._from_fallback(queries)
        if not queries:
            return []
        vectors = np.asarray(self.embedder.embed([q.text for q in queries]), dtype=np.float32)
        keys = [(q.text, q.k, q.max_threshold, q.tier) for q in queries]
        unique = {key: i for i, key in enumerate(keys)}
        tasks = [lambda i=i: self._search(queries[i], vectors[i]) for i in unique.values()]
        try:
            found = dict(zip(unique, self._pool.run(tasks, self.settings.timeout_s)))
        except (WeaviateBaseError, TimeoutError) as exc:
            if not self.settings.fallback:
                raise self._down(exc) from None
            self._use_fallback("weaviate_unreachable")
            return self._from_fallback(queries)
        return [found[key] for key in keys]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
