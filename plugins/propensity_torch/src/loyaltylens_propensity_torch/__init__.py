"""Propensity model plugin (the default ``propensity``): a tabular transformer in PyTorch.

Entry-point module: registers the plugin without importing torch. torch loads when the
stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class TorchPropensitySettings(PluginSettings):
    model_dir: Path | None = Field(None, description="Where versioned models live; default <data_dir>/models")
    version: str | None = Field(None, description="Pin a model version, e.g. propensity_v2; default: latest")
    horizon_days: int = Field(30, ge=1, le=180, description="Label: a redemption within this many days")
    epochs: int = Field(8, ge=1, le=500)
    batch_size: int = Field(256, ge=8, le=65536)
    learning_rate: float = Field(2e-3, gt=0, lt=1)
    d_model: int = Field(32, ge=8, le=512)
    heads: int = Field(4, ge=1, le=16)
    layers: int = Field(2, ge=1, le=12)
    threshold: float = Field(0.5, ge=0, le=1, description="Score at or above which label is 1")
    score_cache_size: int = Field(
        200_000, ge=0, description="Scores memoised by feature values (0 turns the memo off)"
    )
    segment_by: Literal["tier", "channel_preference"] | None = Field(
        None, description="Train one model per value of this categorical feature beside the global one; "
                          "each customer is scored by its segment's model"
    )
    segment_must_beat_global: bool = Field(
        True, description="A segment's model scores its customers only if it beats the global model on the "
                          "segment's held-out rows (higher AUC); false: always"
    )
    min_segment_size: int = Field(
        1000, ge=50, description="Training examples a segment needs for a model of its own; "
                                 "smaller segments are scored by the global model"
    )


def build(settings: TorchPropensitySettings, context: StageContext) -> Any:
    from .model import TorchPropensityModel

    return TorchPropensityModel(settings, context)


@hookimpl
def register_propensity_models(register: Register) -> None:
    register("torch", build, settings=TorchPropensitySettings,
             description="Tabular transformer (per-feature embeddings, encoder, MLP)")
