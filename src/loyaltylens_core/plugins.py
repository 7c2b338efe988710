"""Plugin discovery and stage resolution.

Plugins are found through the ``loyaltylens`` entry-point group, the built-in defaults
included: the core has no special path for its own plugins. Each entry point is loaded
on its own so that one broken plugin is reported by name and cannot break the others
unless a stage selects it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
from typing import Any, Callable, Iterable, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict

from . import hookspecs
from .errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "loyaltylens"


class NoSettings(BaseModel):
    """Settings model for implementations that take none: any key is a mistake."""

    model_config = ConfigDict(extra="forbid")


Factory = Callable[[Any, Any], Any]


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One named implementation of a stage, as a plugin registered it."""

    stage: str
    name: str
    factory: Factory
    settings_model: type[BaseModel]
    plugin: str
    distribution: str | None
    version: str | None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or to register; kept to report, never to run."""

    plugin: str
    distribution: str | None
    version: str | None
    error: str


@dataclasses.dataclass(frozen=True)
class StageEvent:
    """Broadcast to ``loyaltylens_after_stage`` after each stage of a run."""

    run_id: str
    customer_id: str
    stage: str
    plugin: str
    latency_ms: float


class Register(Protocol):
    def __call__(
        self,
        name: str,
        factory: Factory,
        *,
        settings: type[BaseModel] = NoSettings,
        description: str = "",
    ) -> None: ...


def normalise_name(name: str) -> str:
    """Names compare case-insensitively with ``-`` and ``_`` equal, so env vars can name them."""
    return name.strip().lower().replace("-", "_")


@dataclasses.dataclass
class Registry:
    """Everything the installed plugins registered, plus what failed to load."""

    plugin_manager: pluggy.PluginManager
    implementations: dict[str, dict[str, Implementation]]
    broken: list[BrokenPlugin]
    conflicts: dict[tuple[str, str], list[Implementation]]

    def names(self, stage: str) -> list[str]:
        return sorted(self.implementations.get(stage, {}))

    def find(self, stage: str, name: str) -> Implementation | None:
        wanted = normalise_name(name)
        for impl in self.implementations.get(stage, {}).values():
            if normalise_name(impl.name) == wanted:
                return impl
        return None

    def get(self, stage: str, name: str) -> Implementation:
        """The implementation a config selects, or an error that says what is installed."""
        if stage not in hookspecs.STAGES:
            raise ConfigError(
                f"unknown stage {stage!r}",
                f"stages are: {', '.join(hookspecs.STAGES)}{suggest(stage, hookspecs.STAGES)}",
            )
        impl = self.find(stage, name)
        if impl is None:
            raise ConfigError(
                f"no {stage} plugin named {name!r} is installed",
                self._what_is_installed(stage, name),
            )
        clash = self.conflicts.get((stage, normalise_name(impl.name)))
        if clash:
            owners = ", ".join(sorted({i.distribution or i.plugin for i in clash}))
            raise ConfigError(
                f"{stage} {impl.name!r} is registered by more than one plugin ({owners})",
                "uninstall one of them",
            )
        return impl

    def _what_is_installed(self, stage: str, name: str) -> str:
        installed = self.names(stage)
        broken = [b for b in self.broken]
        parts = [f"installed: {', '.join(installed) if installed else 'none'}"]
        suggestion = suggest(name, installed)
        if suggestion:
            parts[0] += suggestion
        if broken:
            parts.append(
                "failed to load: "
                + "; ".join(f"{b.plugin} ({b.error})" for b in broken)
            )
        return "; ".join(parts)


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest choice, or nothing: every 'unknown X' error uses it."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("loyaltylens")
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(
    extra_plugins: Iterable[object] = (),
    *,
    entry_points: bool = True,
    blocked: Iterable[str] = (),
) -> Registry:
    """Discover plugins and collect their registrations.

    ``extra_plugins`` are registered directly (tests, embedding applications);
    ``entry_points=False`` skips discovery so core tests see only the fakes they pass.
    """
    pm = new_plugin_manager()
    broken: list[BrokenPlugin] = []
    dist_of: dict[str, tuple[str | None, str | None]] = {}
    blocked = set(blocked)

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.get_plugin(ep.name) is not None:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                broken.append(BrokenPlugin(ep.name, dist_name, dist_version, _describe_error(exc)))
                continue
            dist_of[ep.name] = (dist_name, dist_version)

    for plugin in extra_plugins:
        name = pm.register(plugin)
        if name is not None:
            dist_of.setdefault(name, (None, None))

    implementations: dict[str, dict[str, Implementation]] = {s: {} for s in hookspecs.STAGES}
    conflicts: dict[tuple[str, str], list[Implementation]] = {}
    for stage, hook_name in hookspecs.REGISTRATION_HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        for hook_impl in caller.get_hookimpls():
            plugin_name = hook_impl.plugin_name
            dist_name, dist_version = dist_of.get(plugin_name, (None, None))
            collected: list[Implementation] = []

            def register(
                name: str,
                factory: Factory,
                *,
                settings: type[BaseModel] = NoSettings,
                description: str = "",
                _stage: str = stage,
                _plugin: str = plugin_name,
                _dist: str | None = dist_name,
                _version: str | None = dist_version,
                _into: list[Implementation] = collected,
            ) -> None:
                if not name or not callable(factory):
                    raise TypeError("register(name, factory) needs a name and a callable factory")
                if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
                    raise TypeError(f"settings for {name!r} must be a pydantic BaseModel subclass")
                _into.append(
                    Implementation(
                        _stage, name, factory, settings, _plugin, _dist, _version, description
                    )
                )

            try:
                hook_impl.function(register=register)
            except Exception as exc:  # noqa: BLE001 - a plugin that breaks while registering isolates itself
                broken.append(
                    BrokenPlugin(plugin_name, dist_name, dist_version, _describe_error(exc))
                )
                continue
            for impl in collected:
                key = normalise_name(impl.name)
                existing = next(
                    (i for i in implementations[stage].values() if normalise_name(i.name) == key),
                    None,
                )
                if existing is not None:
                    conflicts.setdefault((stage, key), [existing]).append(impl)
                    continue
                implementations[stage][impl.name] = impl

    return Registry(pm, implementations, broken, conflicts)


def protocol_members(protocol: type) -> list[str]:
    """The public methods and attributes a Protocol asks for."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v)}
    return sorted(names)


def check_protocol(component: Any, impl: Implementation, protocol: type) -> None:
    """Fail with a message naming the plugin when a component misses its stage's methods."""
    if isinstance(component, protocol):
        return
    missing = [attr for attr in protocol_members(protocol) if not hasattr(component, attr)]
    raise PluginError(
        f"{impl.stage} plugin {impl.name!r} ({impl.distribution or impl.plugin}) built a "
        f"{type(component).__name__} that is not a {protocol.__name__}"
        + (f": missing {', '.join(sorted(missing))}" if missing else ""),
        "fix the plugin or select another with --use",
    )
