"""Rules decider (the default ``decision``): eligibility, validity, caps, stock, ranking.

Caps are counted in a counter store: SQLite in the data dir by default (exact across the
processes of one host: service workers and a batch at once), Redis for many hosts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class RulesDeciderSettings(PluginSettings):
    counter_store: Literal["sqlite", "redis"] = Field(
        "sqlite", description="Where hand-outs of capped offers are counted: sqlite (one host) or redis (many)"
    )
    path: Path | None = Field(None, description="SQLite counter file; default: <data_dir>/decision-rules/counters.sqlite3")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for counter_store = redis")
    key_prefix: str = Field("loyaltylens:caps:", min_length=1, description="Prefix of every Redis key")
    on_store_error: Literal["closed", "open"] = Field(
        "closed",
        description="Counter store down: closed skips capped offers, open hands them out uncounted "
        "(both recorded in fallbacks)",
    )
    timeout_s: float = Field(2.0, gt=0, le=60, description="How long to wait for the counter store")
    enforce_caps: bool = Field(
        True, description="False: caps and stock are neither checked nor counted (previews, replays, tests that "
        "need the same answer twice); every other rule still applies",
    )


def build(settings: RulesDeciderSettings, context: StageContext) -> Any:
    from .counters import open_store
    from .rules import RulesDecider

    path = settings.path or context.data_dir / "decision-rules" / "counters.sqlite3"
    return RulesDecider(open_store(settings, path), on_store_error=settings.on_store_error,
                        nonblocking=settings.counter_store == "sqlite", enforce_caps=settings.enforce_caps)


@hookimpl
def register_deciders(register: Register) -> None:
    register("rules", build, settings=RulesDeciderSettings,
             description="Eligibility rules, validity, caps and stock from the catalogue; ranking per placement")
