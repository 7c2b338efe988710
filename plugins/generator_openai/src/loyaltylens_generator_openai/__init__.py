"""LLM copy generator over the OpenAI chat completions API.

Works with OpenAI and any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LiteLLM) via
``base_url``. Entry-point module: ``openai`` is imported only when the stage is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from loyaltylens_core import PluginSettings, Register, StageContext, hookimpl


class OpenAIGeneratorSettings(PluginSettings):
    model: str = Field("gpt-4o-mini", min_length=1)
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://localhost:11434/v1")
    api_key: SecretStr | None = Field(None, description="Default: $OPENAI_API_KEY")
    temperature: float = Field(0.7, ge=0, le=2)
    timeout_s: float = Field(20.0, gt=0, le=600)
    max_retries: int = Field(2, ge=0, le=10, description="Retries with backoff on 429, 5xx and time-outs")
    prompt_version: str = Field("v1")
    prompts: Path | None = Field(None, description="TOML file of your own prompt versions")
    structured_output: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="json_object for servers without JSON-schema support"
    )
    on_error: Literal["fallback", "raise"] = Field(
        "fallback", description="After retries: use the fallback generator's copy, or fail the run"
    )
    fallback_generator: str = Field("template", description="Generator plugin used as fallback")
    concurrency: int = Field(16, ge=1, le=256, description="Requests in flight during batch runs")
    online_concurrency: int = Field(
        256, ge=1, le=4096, description="Requests in flight from one `loyaltylens serve` worker"
    )
    max_headline_chars: int = Field(80, ge=10, le=500)
    max_body_chars: int = Field(400, ge=20, le=4000)
    max_cta_chars: int = Field(40, ge=5, le=200)


def build(settings: OpenAIGeneratorSettings, context: StageContext) -> Any:
    from .generator import OpenAIGenerator

    return OpenAIGenerator(settings, context)


@hookimpl
def register_generators(register: Register) -> None:
    register("openai", build, settings=OpenAIGeneratorSettings,
             description="OpenAI-compatible chat completions with structured output and guardrails")
