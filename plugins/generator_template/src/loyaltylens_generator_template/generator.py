"""Versioned copy templates. Every placeholder is checked against the core adapter when
the templates load, so a typo fails at start-up, never as literal ``{braces}`` in copy
that reaches a customer."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Sequence

from loyaltylens_core.kernel.adapters import check_template, render
from loyaltylens_core.kernel.contracts import GeneratedCopy
from loyaltylens_core.kernel.errors import ConfigError

FIELDS = ("headline", "body", "cta")

BUILTIN: dict[str, dict[str, dict[str, str]]] = {
    "v1": {
        "default": {
            "headline": "{tier_title} member exclusive: {offer_title}",
            "body": "{offer_description} Yours for the next {offer_valid_days} days.",
            "cta": "Claim it {channel_phrase}",
        },
        "birthday": {
            "headline": "Happy birthday from us: {offer_title}",
            "body": "{offer_description} Our thanks for being a {tier} member.",
            "cta": "Claim your treat {channel_phrase}",
        },
        "win_back": {
            "headline": "{offer_title}",
            "body": "{offer_description} It is waiting for you for {offer_valid_days} days.",
            "cta": "Come back {channel_phrase}",
        },
        "tier_upgrade": {
            "headline": "Your road from {tier} starts here: {offer_title}",
            "body": "{offer_description}",
            "cta": "Start your upgrade {channel_phrase}",
        },
        "points_multiplier": {
            "headline": "{offer_title}, just for you",
            "body": "{offer_description} Points land on your {tier} account automatically.",
            "cta": "Shop {offer_category_label} {channel_phrase}",
        },
        "partner": {
            "headline": "{offer_title}",
            "body": "{offer_description} A partner reward for {tier} members.",
            "cta": "See partner details {channel_phrase}",
        },
    }
}


class TemplateGenerator:
    # In-process string formatting: the service may call it on its event loop.
    nonblocking = True

    def __init__(self, version: str, sets: dict[str, dict[str, str]]) -> None:
        if "default" not in sets:
            raise ConfigError(f"template set {version!r} has no [default] templates", "add one")
        for category, templates in sets.items():
            missing = [f for f in FIELDS if not templates.get(f)]
            if missing:
                raise ConfigError(
                    f"template set {version!r} [{category}] lacks {', '.join(missing)}",
                    "give headline, body and cta",
                )
            for field in FIELDS:
                check_template(templates[field], f"{version}/{category}/{field}")
        self.version = version
        self.sets = sets
        self.prompt_version = f"template-{version}"

    @classmethod
    def from_settings(cls, settings: Any) -> "TemplateGenerator":
        available = dict(BUILTIN)
        if settings.templates is not None:
            available.update(load_template_file(Path(settings.templates)))
        if settings.version not in available:
            raise ConfigError(
                f"no template set {settings.version!r}",
                f"available: {', '.join(sorted(available))}",
            )
        return cls(settings.version, available[settings.version])

    def generate_many(self, many: Sequence[dict[str, Any]]) -> list[GeneratedCopy]:
        """A batch's copy in one call (``BatchGenerator``): the pipeline then checks the
        copies in one go instead of stepping through its per-customer path for each."""
        return [self.generate(variables) for variables in many]

    def generate(self, variables: dict[str, Any]) -> GeneratedCopy:
        templates = self.sets.get(variables.get("offer_category", ""), self.sets["default"])
        return GeneratedCopy(
            headline=render(templates["headline"], variables),
            body=render(templates["body"], variables),
            cta=render(templates["cta"], variables),
            prompt_version=self.prompt_version,
        )


def load_template_file(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    if not path.is_file():
        raise ConfigError(f"template file {path} does not exist", "check [generator.template] templates")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"template file {path} is not valid TOML: {exc}", "fix the file") from None
    for version, sets in data.items():
        if not isinstance(sets, dict) or not all(isinstance(t, dict) for t in sets.values()):
            raise ConfigError(f"template file {path}: [{version}] must hold [{version}.<category>] tables", "")
    return data
