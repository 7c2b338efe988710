"""LoyaltyLens ``propensity`` ``lightgbm``: the baseline a tabular-data team reaches for first.

Same contracts, same training data (the feature store's point-in-time examples), same
evaluation (the latest window held out, oracle metrics on demo data) and the same
calibration as the default ``torch`` model, so the two compare honestly:

    loyaltylens --use propensity=lightgbm train
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class LightGBMSettings(PluginSettings):
    """``[propensity.lightgbm]`` in loyaltylens.toml, or LOYALTYLENS_PROPENSITY_LIGHTGBM__<SETTING>."""

    model_dir: Path | None = Field(None, description="Where versions live; default <data_dir>/models-lightgbm")
    version: str | None = Field(None, description="Pin a version (lightgbm_vN); default: the latest")
    horizon_days: int = Field(30, ge=1, le=365, description="Label: a redemption within this many days after as_of")
    threshold: float = Field(0.5, ge=0, le=1, description="Score at or above which the label is 1")
    n_estimators: int = Field(1000, ge=1, le=100_000, description="Most boosting rounds (early stopping on validation)")
    learning_rate: float = Field(0.03, gt=0, le=1)
    num_leaves: int = Field(15, ge=2, le=4096)
    min_child_samples: int = Field(40, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)


def build(settings: LightGBMSettings, context: StageContext) -> Any:
    from .model import LightGBMPropensity

    return LightGBMPropensity(settings, context)


@hookimpl
def register_propensity_models(register: Register) -> None:
    register("lightgbm", build, settings=LightGBMSettings,
             description="Gradient-boosted trees (LightGBM), calibrated; not exportable to TorchScript endpoints")
