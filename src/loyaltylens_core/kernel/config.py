"""Configuration: which plugin runs each stage, and each plugin's settings.

Precedence, highest first: CLI flag (``--use retriever=weaviate``) > environment
(``LOYALTYLENS_RETRIEVER=weaviate``, ``LOYALTYLENS_RETRIEVER_WEAVIATE__URL=...``) >
``loyaltylens.toml`` > defaults. Every value remembers where it came from so that
``loyaltylens config show`` can say it, and every unknown key is an error: a typo must
never fall back to a default silently.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from loyaltylens_core.kernel.errors import ConfigError, UsageError
from loyaltylens_core.kernel.stages import DEFAULT_STAGES, STAGES
from loyaltylens_core.kernel.registry import Implementation, Registry, normalise_name, suggest

if TYPE_CHECKING:
    # Imported where used: the data contracts and the campaign parser are ~35 ms of
    # pydantic model building that `loyaltylens plugins` and `--help` never need.
    from loyaltylens_core.kernel.campaigns import Campaign
    from loyaltylens_core.kernel.contracts import Placement

ENV_PREFIX = "LOYALTYLENS_"
CONFIG_FILE_NAME = "loyaltylens.toml"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it may be, else a quoted (escaped) string, so a hint
    that tells a user what to write is valid TOML whatever the name."""
    import json

    return name if _BARE_KEY.match(name) else json.dumps(name)


# Variables the seed project used, kept working: name -> stage it selects.
LEGACY_STAGE_VARIABLES: dict[str, str] = {"DEPLOY_TARGET": "deploy_target"}

# LOYALTYLENS_* variables that are not settings.
RESERVED_ENV = {
    "LOYALTYLENS_CONFIG", "LOYALTYLENS_DEBUG", "LOYALTYLENS_TRACE_PLUGINS",
    "LOYALTYLENS_API_KEYS",  # `serve`: name:key,name:key
    "LOYALTYLENS_SERVE_OPTIONS",  # `serve` -> its worker processes
    "LOYALTYLENS_COMMAND",  # the command orchestrators (loyaltylens-orchestrator-prefect) run
    "LOYALTYLENS_CACHE_DIR",  # the per-user cache (util.cache): embeddings, ONNX export, plugin list
    "LOYALTYLENS_NO_DISCOVERY_CACHE",  # scan entry points on every start (kernel.discovery)
}

_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "loyaltylens"


class CoreSettings(BaseModel):
    """Settings of the core itself (top-level keys of ``loyaltylens.toml``)."""

    # Built on first use, not at import: building a validator makes pydantic scan every
    # installed distribution for its own plugins, which `plugins` and `--help` never need.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    seed: int = 42
    top_k: int = Field(3, ge=1, le=50)
    demo_customers: int = Field(5000, ge=10, le=2_000_000)
    # Plant a drift in the demo data: from DRIFT_FROM_DAY on, baskets cost 40% more (a price
    # rise), so the last snapshot's monetary_90d has moved and `loyaltylens monitor` says so.
    demo_drift: bool = False
    # Every offer handed out is kept in the feedback_store stage (impressions), so that
    # outcomes can be joined to it; false turns that off.
    record_impressions: bool = True
    # The placement a request that names none is decided for ([placements.NAME]; "default"
    # is always there: top_k offers ranked by similarity unless [placements.default] says otherwise).
    placement: str = Field("default", min_length=1)


@dataclasses.dataclass
class Config:
    """The resolved configuration, with the source of every value."""

    core: CoreSettings
    stages: dict[str, str]
    plugin_tables: dict[tuple[str, str], dict[str, Any]]
    sources: dict[str, str]
    path: Path | None = None
    # The [serve] table, validated by `loyaltylens serve` (ServeSettings).
    serve: dict[str, Any] = dataclasses.field(default_factory=dict)
    # [experiments.NAME] tables, checked (experiments.Experiment).
    experiments: dict[str, Any] = dataclasses.field(default_factory=dict)
    # [placements.NAME] tables, checked (contracts.Placement); "default" added when absent.
    placements: dict[str, Placement] = dataclasses.field(default_factory=dict)
    # [campaigns.NAME] tables, checked (campaigns.Campaign); none: the demo campaign.
    campaigns: dict[str, Campaign] = dataclasses.field(default_factory=dict)

    def campaign(self, name: str) -> Campaign:
        """A configured campaign (the built-in demo one when the file configures none)."""
        known = self.all_campaigns()
        found = known.get(name)
        if found is None:
            raise UsageError(
                f"campaign {name!r} is not configured",
                f"configured campaigns: {', '.join(sorted(known))}{suggest(name, known)}; "
                f"add [campaigns.{toml_key(name)}] to loyaltylens.toml",
            )
        return found

    def all_campaigns(self) -> dict[str, Campaign]:
        """The configured campaigns, or the built-in demo campaign when there are none."""
        from loyaltylens_core.kernel.campaigns import demo_campaign

        return dict(self.campaigns) or {demo_campaign().name: demo_campaign()}

    def placement(self, name: str | Placement | None = None) -> Placement:
        """The placement a request asks for (``None``: ``core.placement``; a Placement is
        itself; ``campaign:NAME@RUN`` is that campaign's, counted under run RUN)."""
        from loyaltylens_core.kernel.campaigns import PLACEMENT_PREFIX
        from loyaltylens_core.kernel.contracts import Placement

        if isinstance(name, Placement):
            return name
        if name and name.startswith(PLACEMENT_PREFIX):
            campaign_name, _, run = name[len(PLACEMENT_PREFIX):].partition("@")
            campaign = self.campaign(campaign_name)
            return campaign.placement_in(self.placement(campaign.placement), run)
        wanted = self.core.placement if name is None else name  # "" is a name that is not configured
        found = self.placements.get(wanted)
        if found is not None:
            return found
        if wanted == "default":
            return Placement(name="default", k=self.core.top_k)
        known = sorted({"default", *self.placements})
        if not wanted:
            raise UsageError("placement name is empty",
                             f"leave it out for the default ({self.core.placement}), or name one of: {', '.join(known)}")
        raise UsageError(
            f"placement {wanted!r} is not configured",
            f"configured placements: {', '.join(known)}{suggest(wanted, known)}; add [placements.{toml_key(wanted)}] "
            "to loyaltylens.toml",
        )

    def settings_for(self, impl: Implementation) -> BaseModel:
        """Validate this implementation's table with its own pydantic model."""
        raw = self.plugin_tables.get((impl.stage, normalise_name(impl.name)), {})
        model = impl.settings_model
        unknown = sorted(set(raw) - set(model.model_fields))
        if unknown:
            known = ", ".join(model.model_fields) or "none"
            raise ConfigError(
                f"[{impl.stage}.{impl.name}] has no setting {unknown[0]!r}",
                f"known settings: {known}{suggest(unknown[0], model.model_fields)}",
            )
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(table)"
            source = self.sources.get(f"{impl.stage}.{normalise_name(impl.name)}.{field}", "")
            where = f" (from {source})" if source else ""
            raise ConfigError(
                f"[{impl.stage}.{impl.name}] setting {field!r} is invalid{where}: {err['msg']}",
                "fix the value in loyaltylens.toml or the environment",
            ) from None

    def validate_against(self, registry: Registry, needed: tuple[str, ...] = STAGES) -> None:
        """The stages a command needs, every stage chosen on purpose and every settings
        table must name something installed, and every table must validate."""
        for stage, name in self.stages.items():
            if stage in needed or f"stages.{stage}" in self.sources:
                registry.get(stage, name)
        for stage, name in self.plugin_tables:
            impl = registry.find(stage, name)
            if impl is None:
                installed = registry.names(stage)
                raise ConfigError(
                    f"settings for {stage} {name!r} ({self.sources.get(f'{stage}.{name}', 'config')}) "
                    f"name no installed plugin",
                    f"installed {stage} plugins: {', '.join(installed) or 'none'}"
                    f"{suggest(name, installed)}",
                )
            self.settings_for(impl)

    def describe(self, registry: Registry) -> dict[str, Any]:
        """The resolved config for display: secrets masked, each value with its source."""
        out: dict[str, Any] = {"config_file": str(self.path) if self.path else None, "core": {}}
        for field in CoreSettings.model_fields:
            out["core"][field] = {
                "value": _jsonable(getattr(self.core, field)),
                "source": self.sources.get(field, "default"),
            }
        out["stages"] = {
            stage: {"plugin": name, "source": self.sources.get(f"stages.{stage}", "default")}
            for stage, name in self.stages.items()
        }
        plugins: dict[str, Any] = {}
        for stage, name in self.stages.items():
            impl = registry.find(stage, name)
            if impl is None:
                continue
            settings = self.settings_for(impl)
            table: dict[str, Any] = {}
            for field in type(settings).model_fields:
                value = getattr(settings, field)
                key = f"{stage}.{normalise_name(impl.name)}.{field}"
                table[field] = {
                    "value": mask(field, value),
                    "source": self.sources.get(key, "default"),
                }
            plugins[f"{stage}.{impl.name}"] = table
        out["settings"] = plugins
        out["placements"] = {
            name: self.placement(name).model_dump(exclude={"name"}) for name in sorted({"default", *self.placements})
        }
        out["campaigns"] = {name: c.describe() for name, c in sorted(self.all_campaigns().items())}
        out["experiments"] = {
            name: {"control": e.control, "variants": {
                v.name: {"share": v.share, "model_version": v.model_version, "prompt_version": v.prompt_version,
                         "generator": v.generator} for v in e.variants}}
            for name, e in self.experiments.items()
        }
        return out


def mask(field: str, value: Any) -> Any:
    """Secrets never leave the process in clear: SecretStr or a secret-sounding name."""
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else ""
    if value and any(word in field.lower() for word in _SECRET_WORDS):
        return "********"
    if isinstance(value, str) and _URL_PASSWORD.search(value):
        return _URL_PASSWORD.sub(r"\1********@", value)  # redis://:pw@host, https://user:pw@host
    return _jsonable(value)


# scheme://[user]:password@ in a URL-valued setting
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)
_ANY_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)


def mask_urls(text: str) -> str:
    """Passwords inside any URL of a message (a library's error quoting the URL it called)."""
    return _ANY_URL_PASSWORD.sub(r"\1********@", text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def find_config_file(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist", "check --config")
        return path
    if env.get("LOYALTYLENS_CONFIG"):
        path = Path(env["LOYALTYLENS_CONFIG"])
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} (from LOYALTYLENS_CONFIG) does not exist",
                "unset LOYALTYLENS_CONFIG or point it at a file",
            )
        return path
    local = Path.cwd() / CONFIG_FILE_NAME
    return local if local.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", "fix the file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", "check the path") from None


def parse_use(values: list[str]) -> dict[str, str]:
    """``--use retriever=weaviate`` (repeatable) into {stage: name}."""
    out: dict[str, str] = {}
    for value in values:
        stage, sep, name = value.partition("=")
        stage = stage.strip().replace("-", "_")
        if not sep or not stage or not name.strip():
            raise ConfigError(f"--use {value!r} is not STAGE=NAME", "e.g. --use retriever=weaviate")
        if stage not in STAGES:
            raise ConfigError(
                f"--use names unknown stage {stage!r}",
                f"stages are: {', '.join(STAGES)}{suggest(stage, STAGES)}",
            )
        out[stage] = name.strip()
    return out


def load_config(
    config_path: str | Path | None = None,
    *,
    use: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, file, environment and CLI into one ``Config``."""
    env = dict(os.environ if env is None else env)
    stages = dict(DEFAULT_STAGES)
    sources: dict[str, str] = {}
    core_raw: dict[str, Any] = {}
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    serve: dict[str, Any] = {}
    experiments: dict[str, Any] = {}
    placements: dict[str, Placement] = {}
    campaigns: dict[str, Campaign] = {}

    path = find_config_file(config_path, env)
    if path is not None:
        data = read_toml(path)
        if "serve" in data:
            serve = data.pop("serve")
            if not isinstance(serve, dict):
                raise ConfigError(f"file:{path}: 'serve' must be a table", "write [serve]")
        if "experiments" in data:
            from loyaltylens_core.kernel.experiments import parse

            experiments = parse(data.pop("experiments"), f"file:{path}")
        if "placements" in data:
            placements = parse_placements(data.pop("placements"), f"file:{path}")
        if "campaigns" in data:
            from loyaltylens_core.kernel.campaigns import parse_campaigns

            campaigns = parse_campaigns(data.pop("campaigns"), f"file:{path}", path.parent)
        _merge_file(data, f"file:{path}", stages, core_raw, tables, sources)
    _merge_env(env, stages, core_raw, tables, sources)
    for stage, name in parse_use(use or []).items():
        stages[stage] = name
        sources[f"stages.{stage}"] = "cli:--use"

    try:
        # Nothing set: the defaults need no validating, and not building the validator
        # keeps `plugins` and `config show` from paying for pydantic's own plugin scan.
        core = CoreSettings.model_validate(core_raw) if core_raw else CoreSettings.model_construct()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"setting {field!r} is invalid (from {sources.get(field, 'config')}): {err['msg']}",
            "fix the value",
        ) from None
    _placement_configured(core.placement, placements,
                          f"setting 'placement' (from {sources.get('placement', 'config')}) names placement "
                          f"{core.placement!r}, which is not configured")
    for campaign in campaigns.values():
        _placement_configured(campaign.placement, placements, f"{campaign.source}: [campaigns.{campaign.name}] "
                              f"placement {campaign.placement!r} is not configured")
    return Config(core=core, stages=stages, plugin_tables=tables, sources=sources, path=path, serve=serve,
                  experiments=experiments, placements=placements, campaigns=campaigns)


def _placement_configured(name: str, placements: dict[str, Placement], message: str) -> None:
    """A placement a setting names must exist ("default" always does)."""
    if name != "default" and name not in placements:
        raise ConfigError(message, f"add [placements.{name}] or pick one of: {', '.join(sorted({'default', *placements}))}")


def parse_placements(raw: Any, source: str) -> dict[str, Placement]:
    """``[placements.NAME]`` tables, each checked now: a bad ranking formula or an unknown
    key fails when the config loads, naming the table."""
    from loyaltylens_core.kernel.contracts import Placement

    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{source}: 'placements' must hold one table per placement",
                          "write e.g. [placements.app-banner] with k = 1")
    out: dict[str, Placement] = {}
    for name, table in raw.items():
        try:
            out[name] = Placement.model_validate({**table, "name": name})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(table)"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"no such key; keys are: {', '.join(f for f in Placement.model_fields if f != 'name')}"
            raise ConfigError(f"{source}: [placements.{name}] {field}: {message}", "fix the placement") from None
    return out


def _merge_file(
    data: dict[str, Any],
    source: str,
    stages: dict[str, str],
    core_raw: dict[str, Any],
    tables: dict[tuple[str, str], dict[str, Any]],
    sources: dict[str, str],
) -> None:
    for key, value in data.items():
        if key in CoreSettings.model_fields:
            core_raw[key] = value
            sources[key] = source
        elif key == "stages":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'stages' must be a table", "write [stages]")
            for stage, name in value.items():
                if stage not in STAGES:
                    raise ConfigError(
                        f"{source}: [stages] names unknown stage {stage!r}",
                        f"stages are: {', '.join(STAGES)}{suggest(stage, STAGES)}",
                    )
                if not isinstance(name, str) or not name.strip():
                    raise ConfigError(f"{source}: [stages] {stage} must be a plugin name", "")
                stages[stage] = name.strip()
                sources[f"stages.{stage}"] = source
        elif key in STAGES:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(
                    f"{source}: [{key}] must hold one table per plugin",
                    f"write e.g. [{key}.{DEFAULT_STAGES[key]}]",
                )
            for name, table in value.items():
                norm = normalise_name(name)
                tables.setdefault((key, norm), {}).update(table)
                sources[f"{key}.{norm}"] = source
                for field in table:
                    sources[f"{key}.{norm}.{field}"] = source
        else:
            known = [*CoreSettings.model_fields, "stages", "serve", "experiments", "placements", "campaigns", *STAGES]
            raise ConfigError(
                f"{source}: unknown key {key!r}",
                f"top-level keys are: {', '.join(known)}{suggest(key, known)}",
            )


def _merge_env(
    env: Mapping[str, str],
    stages: dict[str, str],
    core_raw: dict[str, Any],
    tables: dict[tuple[str, str], dict[str, Any]],
    sources: dict[str, str],
) -> None:
    for var, stage in LEGACY_STAGE_VARIABLES.items():
        if env.get(var):
            stages[stage] = env[var].strip()
            sources[f"stages.{stage}"] = f"env:{var}"
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV:
            continue
        rest = var[len(ENV_PREFIX) :]
        value = env[var]
        if "__" in rest:
            plugin_part, _, field = rest.partition("__")
            stage, name = _split_plugin_id(plugin_part, var)
            norm = normalise_name(name)
            tables.setdefault((stage, norm), {})[field.lower()] = value
            sources[f"{stage}.{norm}"] = sources.get(f"{stage}.{norm}", f"env:{var}")
            sources[f"{stage}.{norm}.{field.lower()}"] = f"env:{var}"
        elif rest.lower() in STAGES:
            stages[rest.lower()] = value.strip()
            sources[f"stages.{rest.lower()}"] = f"env:{var}"
        elif rest.lower() in CoreSettings.model_fields:
            core_raw[rest.lower()] = value
            sources[rest.lower()] = f"env:{var}"
        else:
            known = [f"{ENV_PREFIX}{k.upper()}" for k in (*STAGES, *CoreSettings.model_fields)]
            raise ConfigError(
                f"environment variable {var} means nothing to loyaltylens",
                f"unset it or use one of {', '.join(known)}, "
                f"or {ENV_PREFIX}<STAGE>_<PLUGIN>__<SETTING>{suggest(var, known)}",
            )


def _split_plugin_id(plugin_part: str, var: str) -> tuple[str, str]:
    lowered = plugin_part.lower()
    for stage in sorted(STAGES, key=len, reverse=True):
        if lowered.startswith(stage + "_") and len(lowered) > len(stage) + 1:
            return stage, lowered[len(stage) + 1 :]
    raise ConfigError(
        f"environment variable {var} does not start with a stage name",
        f"write {ENV_PREFIX}<STAGE>_<PLUGIN>__<SETTING>, e.g. {ENV_PREFIX}RETRIEVER_WEAVIATE__URL",
    )
