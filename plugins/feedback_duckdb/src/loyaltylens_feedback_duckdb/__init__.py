"""Feedback store in the data dir (the default ``feedback_store``): impressions and
outcomes as append-only Parquet segments, read and joined with DuckDB.

This module is the entry point: it registers the plugin and stays cheap to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class DuckDBFeedbackSettings(PluginSettings):
    path: Path | None = Field(None, description="Directory of the segments; default <data_dir>/feedback")
    compact_after: int = Field(
        64, ge=2, le=100_000,
        description="Merge a table's segments into one when a write leaves more than this many",
    )


def build(settings: DuckDBFeedbackSettings, context: StageContext) -> Any:
    from .store import DuckDBFeedbackStore

    return DuckDBFeedbackStore(settings.path or context.data_dir / "feedback", settings.compact_after)


@hookimpl
def register_feedback_stores(register: Register) -> None:
    register("duckdb", build, settings=DuckDBFeedbackSettings,
             description="Impressions and outcomes as Parquet segments in the data dir, joined with DuckDB")
