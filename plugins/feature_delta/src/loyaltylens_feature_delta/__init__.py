"""Feature store on Delta Lake tables (``feature_store = "delta"``).

Reads a feature table laid out as a Databricks feature table (primary key ``customer_id``,
timestamp key ``as_of``) from a local path or ``s3://`` through delta-rs: no Spark and no
cluster. Entry-point module: ``deltalake`` is imported only when the stage is built.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl

# Secrets stay in the environment (delta-rs reads AWS_* itself), never in loyaltylens.toml,
# where `config show` and a commit would expose them.
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "SAS_KEY", "ACCOUNT_KEY", "CLIENT_SECRET")


class DeltaFeatureSettings(PluginSettings):
    """``[feature_store.delta]`` in loyaltylens.toml, or LOYALTYLENS_FEATURE_STORE_DELTA__<SETTING>."""

    path: str | None = Field(
        None, description="The feature table: a local path or s3://bucket/prefix; default <data_dir>/delta/customer_features")
    labels_path: str | None = Field(
        None, description="The training-label table (customer_id, as_of, horizon_days, label); default: <path>_labels")
    version: int | None = Field(
        None, ge=0, description="Read this table version (time travel); default: the latest commit")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description='Our field -> the table\'s column where the names differ, e.g. {tier = "loyalty_tier"}')
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="delta-rs storage options (AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP...); credentials come "
                    "from the environment")

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, options: dict[str, str]) -> dict[str, str]:
        secret = [key for key in options if any(word in key.upper() for word in SECRET_WORDS)]
        if secret:
            raise ValueError(f"{', '.join(secret)} is a credential: set it in the environment, not in the config")
        return options


def build(settings: DeltaFeatureSettings, context: StageContext) -> Any:
    from .store import DeltaFeatureStore

    return DeltaFeatureStore(settings, context)


@hookimpl
def register_feature_stores(register: Register) -> None:
    register("delta", build, settings=DeltaFeatureSettings,
             description="Features in a Delta Lake table (Databricks feature-table layout), read with delta-rs")
