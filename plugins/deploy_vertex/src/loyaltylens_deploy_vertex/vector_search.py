"""Vertex AI Vector Search for the offer embeddings: index, upsert, index endpoint,
deploy, find_neighbors, teardown. Built so a retriever plugin can use it as a backend.

Each offer is a datapoint with its vector, a ``tier`` token restrict (eligibility) and a
``min_propensity_threshold`` numeric restrict, so the same filters the other retrievers
apply run inside Vector Search.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from google.api_core import exceptions as google_exceptions

from loyaltylens_core.kernel.contracts import Offer

from .clients import credentials, google_error, init_aiplatform


@dataclasses.dataclass(frozen=True)
class Neighbor:
    offer_id: str
    distance: float


class OfferVectorSearch:
    def __init__(self, settings: Any, name: str = "loyaltylens-offers") -> None:
        self.settings = settings
        self.name = name
        self.deployed_index_id = name.replace("-", "_")
        self.aiplatform = init_aiplatform(settings, credentials(settings))
        self.index: Any = None
        self.endpoint: Any = None

    def _find(self, kind: Any) -> Any:
        found = kind.list(filter=f'display_name="{self.name}"')
        return found[0] if found else None

    def deploy(self, offers: Sequence[Offer], vectors: Any) -> dict[str, Any]:
        """Create (or reuse) the index and a public index endpoint, upsert every offer, deploy."""
        from google.cloud.aiplatform_v1.types import IndexDatapoint

        ai = self.aiplatform
        try:
            self.index = self._find(ai.MatchingEngineIndex) or ai.MatchingEngineIndex.create_brute_force_index(
                display_name=self.name, dimensions=int(vectors.shape[1]), distance_measure_type="COSINE_DISTANCE",
                index_update_method="STREAM_UPDATE", sync=True)
            points = [
                IndexDatapoint(
                    datapoint_id=offer.offer_id,
                    feature_vector=[float(x) for x in vector],
                    restricts=[IndexDatapoint.Restriction(namespace="tier", allow_list=list(offer.tiers))],
                    numeric_restricts=[IndexDatapoint.NumericRestriction(
                        namespace="min_propensity_threshold", value_float=offer.min_propensity_threshold)],
                )
                for offer, vector in zip(offers, vectors)
            ]
            for start in range(0, len(points), 100):
                self.index.upsert_datapoints(datapoints=points[start : start + 100])
            self.endpoint = self._find(ai.MatchingEngineIndexEndpoint) or ai.MatchingEngineIndexEndpoint.create(
                display_name=self.name, public_endpoint_enabled=True, sync=True)
            if not any(d.id == self.deployed_index_id for d in self.endpoint.deployed_indexes):
                self.endpoint.deploy_index(index=self.index, deployed_index_id=self.deployed_index_id, sync=True)
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("Vector Search deploy", exc) from None
        return {"index": self.index.resource_name, "index_endpoint": self.endpoint.resource_name,
                "deployed_index_id": self.deployed_index_id, "datapoints": len(points)}

    def find_neighbors(
        self, vectors: Any, k: int, *, max_threshold: float | None = None, tier: str | None = None
    ) -> list[list[Neighbor]]:
        from google.cloud.aiplatform.matching_engine.matching_engine_index_endpoint import (
            HybridQuery,  # noqa: F401 - imported to fail early on SDKs without filters support
            Namespace,
            NumericNamespace,
        )

        if self.endpoint is None:
            self.endpoint = self._find(self.aiplatform.MatchingEngineIndexEndpoint)
        filters = [Namespace(name="tier", allow_tokens=[tier], deny_tokens=[])] if tier else None
        numeric = ([NumericNamespace(name="min_propensity_threshold", value_float=max_threshold, op="LESS_EQUAL")]
                   if max_threshold is not None else None)
        try:
            found = self.endpoint.find_neighbors(
                deployed_index_id=self.deployed_index_id, queries=[[float(x) for x in v] for v in vectors],
                num_neighbors=k, filter=filters, numeric_filter=numeric)
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("find_neighbors", exc) from None
        return [[Neighbor(n.id, float(n.distance)) for n in row] for row in found]

    def teardown(self) -> list[str]:
        deleted = []
        try:
            endpoint = self.endpoint or self._find(self.aiplatform.MatchingEngineIndexEndpoint)
            if endpoint is not None:
                endpoint.undeploy_all(sync=True)
                endpoint.delete(sync=True)
                deleted.append(endpoint.resource_name)
            index = self.index or self._find(self.aiplatform.MatchingEngineIndex)
            if index is not None:
                index.delete(sync=True)
                deleted.append(index.resource_name)
        except google_exceptions.GoogleAPIError as exc:
            raise google_error("Vector Search teardown", exc) from None
        return deleted
