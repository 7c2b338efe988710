"""Feature store on a Feast repo (``feature_store = "feast"``).

For teams whose features already live in Feast: online reads go through the real Feast SDK
(``get_online_features``, so whatever online store the repo names: Redis, DynamoDB,
Bigtable...), training sets through its historical retrieval (a point-in-time join).
Entry-point module: ``feast`` (several seconds to import) loads only when the stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class FeastFeatureSettings(PluginSettings):
    """``[feature_store.feast]`` in loyaltylens.toml, or LOYALTYLENS_FEATURE_STORE_FEAST__<SETTING>."""

    repo_path: Path | None = Field(None, description="The Feast repo (the directory holding feature_store.yaml)")
    feature_service: str | None = Field(
        None, description="Feature service to read; default: `features`, else the only service in the repo")
    features: list[str] = Field(
        default_factory=list, description='Feature references instead of a service: ["customer_features:tier", ...]')
    fields: dict[str, str] = Field(
        default_factory=dict,
        description='CustomerFeatures field -> Feast feature ("view:feature" or "feature") where the names differ')
    entity_key: str = Field("customer_id", description="The join key of the customer entity")
    labels_path: Path | None = Field(
        None, description="Training labels (Parquet or CSV: customer_id, as_of, horizon_days, label), the entity "
                          "rows of historical retrieval; default <repo_path>/data/labels.parquet")
    feature_version: str | None = Field(
        None, description="feature_version of every row when no Feast feature is mapped to it; default feast:<project>")


def build(settings: FeastFeatureSettings, context: StageContext) -> Any:
    from .store import FeastFeatureStore

    return FeastFeatureStore(settings, context)


@hookimpl
def register_feature_stores(register: Register) -> None:
    register("feast", build, settings=FeastFeatureSettings,
             description="Features from a Feast repo: online store reads, historical retrieval for training")
