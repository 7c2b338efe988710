"""Weaviate retriever: offers in a Weaviate collection, near_vector search with filters.

Entry-point module: ``weaviate`` is imported only when the stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class WeaviateRetrieverSettings(PluginSettings):
    url: str = Field("http://localhost:8080", description="REST endpoint of a self-hosted Weaviate")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port on the same host")
    cluster_url: str | None = Field(None, description="Weaviate Cloud cluster URL (then url/grpc_port are unused)")
    api_key: SecretStr | None = Field(None, description="Default: $WEAVIATE_API_KEY (none for local servers)")
    collection: str = Field("LoyaltyLensOffers", pattern=r"^[A-Z][A-Za-z0-9_]{0,99}$")
    catalogue: Path | None = Field(None, description="Offers as a JSON list; default: the demo catalogue")
    timeout_s: float = Field(10.0, gt=0, le=300)
    fallback: str | None = Field(
        None, description="Retriever plugin to use while Weaviate is unreachable, e.g. \"duckdb\""
    )
    search_threads: int = Field(8, ge=1, le=64, description="Parallel searches in batch retrieval")
    init_checks: bool = Field(
        False, description="Let the client run its start-up checks (gRPC ping and a PyPI version lookup)"
    )


def build(settings: WeaviateRetrieverSettings, context: StageContext) -> Any:
    from .retriever import WeaviateRetriever

    return WeaviateRetriever(settings, context)


@hookimpl
def register_retrievers(register: Register) -> None:
    register("weaviate", build, settings=WeaviateRetrieverSettings,
             description="Weaviate v4: self-indexing collection, near_vector top-k with filters")
