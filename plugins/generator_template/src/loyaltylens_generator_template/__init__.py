"""Template generator (the default ``generator``): deterministic copy, no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class TemplateGeneratorSettings(PluginSettings):
    version: str = Field("v1", description="Template set to use (built-in: v1)")
    templates: Path | None = Field(
        None, description="TOML file of your own template sets: [v2.default] headline/body/cta, [v2.<category>] ..."
    )


def build(settings: TemplateGeneratorSettings, context: StageContext) -> Any:
    from .generator import TemplateGenerator

    return TemplateGenerator.from_settings(settings)


@hookimpl
def register_generators(register: Register) -> None:
    register("template", build, settings=TemplateGeneratorSettings,
             description="Versioned copy templates, filled through the adapter")
