"""Experiments: ``[experiments.NAME]`` in loyaltylens.toml splits customers between
variants that pin a model version, a prompt version or a generator.

    [experiments.spring_copy]
    control = "a"                         # what lift is measured against (default: first)
    [experiments.spring_copy.variants.a]
    share = 0.5
    [experiments.spring_copy.variants.b]
    share = 0.5
    prompt_version = "v2"                 # the generator's prompt / template version
    model_version = "propensity_v3"       # a trained propensity version
    generator = "openai"                  # another generator plugin

A customer's variant is a hash of (experiment, customer id): the same in every process,
on every machine, in `run`, `batch` and the service, and independent between experiments.
Two experiments may not change the same stage (their effects could not be told apart).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any

from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.kernel.registry import normalise_name, suggest

if TYPE_CHECKING:
    from loyaltylens_core.kernel.config import Config
    from loyaltylens_core.kernel.registry import Registry

VARIANT_KEYS = ("share", "model_version", "prompt_version", "generator", "description")
EXPERIMENT_KEYS = ("variants", "control", "description")
# Settings that pin a version, by stage, in the order they are looked for.
_PIN_FIELDS = {"propensity": ("version", "model_version"), "generator": ("version", "prompt_version")}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    share: float
    model_version: str | None = None
    prompt_version: str | None = None
    generator: str | None = None

    def stages(self) -> frozenset[str]:
        """The stages this variant changes."""
        changed = set()
        if self.model_version:
            changed.add("propensity")
        if self.prompt_version or self.generator:
            changed.add("generator")
        return frozenset(changed)


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    control: str

    def assign(self, customer_id: str) -> Variant:
        """The customer's variant: a point in [0, 1) from SHA-256 of (experiment, id),
        placed on the cumulative shares."""
        digest = hashlib.sha256(f"{self.name}\x00{customer_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        total = 0.0
        for variant in self.variants:
            total += variant.share
            if point < total:
                return variant
        return self.variants[-1]

    def stages(self) -> frozenset[str]:
        return frozenset().union(*(v.stages() for v in self.variants))


def parse(raw: Any, source: str) -> dict[str, Experiment]:
    """The ``experiments`` table of the config file, checked: shares positive and summing
    to 1, known keys only, a control that exists, no two experiments on one stage."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'experiments' must be a table", "write [experiments.NAME]")
    out: dict[str, Experiment] = {}
    for name, table in raw.items():
        where = f"{source}: [experiments.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table", f"write [experiments.{name}.variants.a] share = 0.5")
        unknown = sorted(set(table) - set(EXPERIMENT_KEYS))
        if unknown:
            raise ConfigError(f"{where} has no key {unknown[0]!r}",
                              f"keys are: {', '.join(EXPERIMENT_KEYS)}{suggest(unknown[0], EXPERIMENT_KEYS)}")
        variants_raw = table.get("variants")
        if not isinstance(variants_raw, dict) or len(variants_raw) < 2:
            raise ConfigError(f"{where} needs at least two variants",
                              f"write [experiments.{name}.variants.a] and [experiments.{name}.variants.b], each with a share")
        variants = tuple(_variant(f"{where[:-1]}.variants.{v}]", v, t) for v, t in variants_raw.items())
        total = sum(v.share for v in variants)
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{where} variant shares add up to {total:g}", "make the shares add up to 1")
        control = table.get("control", variants[0].name)
        if control not in {v.name for v in variants}:
            raise ConfigError(f"{where} control {control!r} is not one of its variants",
                              f"variants are: {', '.join(v.name for v in variants)}")
        out[name] = Experiment(name, variants, control)
    owners: dict[str, str] = {}
    for experiment in out.values():
        for stage in experiment.stages():
            if stage in owners:
                raise ConfigError(
                    f"{source}: experiments {owners[stage]!r} and {experiment.name!r} both change the {stage} stage",
                    "run them one after the other, or make them one experiment with more variants",
                )
            owners[stage] = experiment.name
    return out


def _variant(where: str, name: str, table: Any) -> Variant:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table", "write share = 0.5 and what the variant pins")
    unknown = sorted(set(table) - set(VARIANT_KEYS))
    if unknown:
        raise ConfigError(f"{where} has no key {unknown[0]!r}",
                          f"keys are: {', '.join(VARIANT_KEYS)}{suggest(unknown[0], VARIANT_KEYS)}")
    share = table.get("share")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ConfigError(f"{where} share must be a number above 0 and at most 1", "e.g. share = 0.5")
    for key in ("model_version", "prompt_version", "generator"):
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            raise ConfigError(f"{where} {key} must be a non-empty string", "")
    return Variant(name, float(share), table.get("model_version"), table.get("prompt_version"), table.get("generator"))


def variant_config(config: "Config", registry: "Registry", variants: tuple[Variant, ...]) -> "Config":
    """The config a customer in these variants runs with: the base config with each
    variant's generator and version pins applied to the plugin tables they concern."""
    stages = dict(config.stages)
    tables = {key: dict(table) for key, table in config.plugin_tables.items()}
    for variant in variants:
        if variant.generator:
            stages["generator"] = variant.generator
    for variant in variants:
        for stage, pin in (("propensity", variant.model_version), ("generator", variant.prompt_version)):
            if not pin:
                continue
            impl = registry.get(stage, stages[stage])
            fields = [f for f in _PIN_FIELDS[stage] if f in impl.settings_model.model_fields]
            if not fields:
                what = "model" if stage == "propensity" else "prompt"
                raise ConfigError(
                    f"experiment variant {variant.name!r} pins a {what} version, but {stage} plugin "
                    f"{impl.name!r} has no version setting",
                    f"pin a {stage} plugin that has one, or drop {what}_version from the variant",
                )
            tables.setdefault((stage, normalise_name(impl.name)), {})[fields[0]] = pin
    return dataclasses.replace(config, stages=stages, plugin_tables=tables)
