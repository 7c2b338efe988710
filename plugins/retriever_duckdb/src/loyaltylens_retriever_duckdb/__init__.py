"""Embedded retriever (the default ``retriever``): vectors in DuckDB, search in numpy.

Entry-point module; duckdb and the embedder load when the stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class DuckDBRetrieverSettings(PluginSettings):
    path: Path | None = Field(None, description="DuckDB file; default <data_dir>/loyaltylens.duckdb")
    catalogue: Path | None = Field(None, description="Offers as a JSON list; default: the demo catalogue")
    table: str = Field("offer_vectors", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    precompute_queries: bool = Field(
        True, description="Embed the adapter's finite query vocabulary at index time, so runs need no model"
    )
    candidate_lists: int = Field(
        16, ge=0, le=200,
        description="Offers kept per query text, tier and threshold bucket for exact sub-ms search; 0: always scan",
    )
    prefilter: int = Field(
        2048, ge=16, description="Most similar offers per query text considered when building candidate lists"
    )
    answer_cache: int = Field(
        4096, ge=0,
        description="Answers kept per (query text, tier, k, threshold step): a question asked again (a returning "
                    "customer, or capped offers' wider second look) is a lookup; 0: off",
    )
    exact_block_bytes: int = Field(
        256 * 2**20, ge=2**20, description="Similarity matrix bytes per block of queries searched exactly (batch)"
    )


def build(settings: DuckDBRetrieverSettings, context: StageContext) -> Any:
    from .retriever import DuckDBRetriever

    return DuckDBRetriever(settings, context)


@hookimpl
def register_retrievers(register: Register) -> None:
    register("duckdb", build, settings=DuckDBRetrieverSettings,
             description="Exact cosine top-k over offer vectors stored in DuckDB")
