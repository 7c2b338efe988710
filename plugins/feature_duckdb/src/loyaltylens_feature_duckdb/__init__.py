"""Feature store on an embedded DuckDB file (the default ``feature_store``).

This module is the entry point: it registers the plugin and stays cheap to import.
The store itself (and duckdb) loads only when the stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class DuckDBFeatureSettings(PluginSettings):
    path: Path | None = Field(None, description="DuckDB file; default <data_dir>/loyaltylens.duckdb")
    source_dir: Path | None = Field(
        None,
        description="Directory with customers.csv, transactions.csv, offer_events.csv; default: demo data",
    )
    snapshot_every_days: int = Field(30, ge=1, le=365, description="Days between feature snapshots")
    snapshots: int = Field(4, ge=2, le=52, description="How many snapshots to keep (the last is the latest)")


def build(settings: DuckDBFeatureSettings, context: StageContext) -> Any:
    from .store import DuckDBFeatureStore

    return DuckDBFeatureStore(settings, context)


@hookimpl
def register_feature_stores(register: Register) -> None:
    register("duckdb", build, settings=DuckDBFeatureSettings,
             description="Features computed in SQL in an embedded DuckDB file")
