"""Versioned prompts. Every placeholder is checked against the core adapter at load, so a
prompt can only ask for variables the pipeline actually provides."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from loyaltylens_core.kernel.adapters import check_template, render
from loyaltylens_core.kernel.errors import ConfigError

BUILTIN: dict[str, dict[str, str]] = {
    "v1": {
        "system": (
            "You write short, warm marketing copy for a retail loyalty programme. "
            "Never invent discounts, prices or conditions that are not in the offer. "
            "Answer with a JSON object with the keys headline, body and cta only. "
            "headline: at most {max_headline_chars} characters. body: at most {max_body_chars} "
            "characters. cta: at most {max_cta_chars} characters, an imperative."
        ),
        "user": (
            "Customer: {tier} tier member who prefers shopping {channel_phrase}; "
            "propensity to redeem {propensity_score}.\n"
            "Offer: {offer_title}\n"
            "Details: {offer_description}\n"
            "Category: {offer_category_label}; valid for {offer_valid_days} days."
        ),
    }
}

# Filled from settings, not from the adapter.
LIMIT_VARIABLES = ("max_headline_chars", "max_body_chars", "max_cta_chars")


@dataclasses.dataclass(frozen=True)
class Prompt:
    version: str
    system: str
    user: str

    def messages(self, variables: dict[str, object], limits: dict[str, int]) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": render(self.system, {**variables, **limits})},
            {"role": "user", "content": render(self.user, variables)},
        ]


def load_prompt(version: str, path: Path | None) -> Prompt:
    available = dict(BUILTIN)
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"prompt file {path} does not exist", "check [generator.openai] prompts")
        try:
            available.update(tomllib.loads(Path(path).read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"prompt file {path} is not valid TOML: {exc}", "fix the file") from None
    if version not in available:
        raise ConfigError(f"no prompt version {version!r}", f"available: {', '.join(sorted(available))}")
    entry = available[version]
    if not isinstance(entry, dict) or not entry.get("system") or not entry.get("user"):
        raise ConfigError(f"prompt {version!r} needs a system and a user text", "add both")
    system = entry["system"]
    for limit in LIMIT_VARIABLES:  # limits are not adapter variables: check the rest only
        system = system.replace("{" + limit + "}", "")
    check_template(system, f"prompt {version}/system")
    check_template(entry["user"], f"prompt {version}/user")
    return Prompt(version=version, system=entry["system"], user=entry["user"])
