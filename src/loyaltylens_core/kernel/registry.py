"""Plugin discovery and stage resolution.

Plugins are found through the ``loyaltylens`` entry-point group, the built-in defaults
included: the core has no special path for its own plugins. Each entry point is loaded
on its own so that one broken plugin is reported by name and cannot break the others
unless a stage selects it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Callable, Iterable, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict

from loyaltylens_core.kernel import discovery, hookspecs
from loyaltylens_core.kernel.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "loyaltylens"


class PluginSettings(BaseModel):
    """Base for a plugin's settings model: a key it does not declare, in loyaltylens.toml or
    the environment, is an error with a "did you mean" (a typo never falls back to a default).
    Use ``SecretStr`` for secrets: ``config show``, ``/v1/config`` and errors mask them."""

    # defer_build: pydantic builds a model's validator when it first validates, not when
    # the plugin module is imported. `loyaltylens plugins` imports every plugin and
    # validates none: building ~20 validators up front was ~80 ms of its start.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class NoSettings(PluginSettings):
    """Settings model for implementations that take none: any key is a mistake."""


# (settings, context) -> component. Any, not (PluginSettings, StageContext) -> object: each
# factory takes its own settings subclass, which a Callable over the base class would refuse
# (parameters are contravariant); the registry checks the settings with the plugin's model.
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
    location: str = ""  # file:line in the plugin's own code where it failed
    traceback: str = ""  # the plugin's traceback, shown with --debug

    def matches(self, name: str) -> bool:
        """Could this be the plugin a config names? (Its registrations are unknown: it
        never loaded. Entry-point and distribution names are what users see.)"""
        wanted = normalise_name(name)
        names = {normalise_name(self.plugin)}
        if self.distribution:
            dist = normalise_name(self.distribution)
            names |= {dist, dist.removeprefix("loyaltylens_"), dist.rsplit("_", 1)[-1]}
        return wanted in names


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
            broken = next((b for b in self.broken if b.matches(name)), None)
            if broken is not None:
                raise PluginError(
                    f"{stage} plugin {name!r} is installed but broken: {broken.error}"
                    + (f" (at {broken.location})" if broken.location else ""),
                    f"fix or reinstall {broken.distribution or broken.plugin}, or select another with --use",
                    detail=broken.traceback,
                )
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


def _broken(plugin: str, dist: str | None, version: str | None, exc: BaseException,
            module: str | None = None) -> BrokenPlugin:
    """Where a plugin failed: the innermost frame in the plugin's own package (else the
    innermost outside the standard library and this module), so a user sees the line in
    the plugin that raised, not ours or json's."""
    import sysconfig
    import traceback

    stdlib = sysconfig.get_paths()["stdlib"]
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(stdlib) and "<frozen" not in f.filename
              and not f.filename.endswith("loyaltylens_core/plugins.py")]
    top = (module or "").split(".")[0]
    own = [f for f in frames if top and (f"/{top}/" in f.filename or f.filename.endswith(f"/{top}.py"))]
    chosen = (own or frames)[-1] if (own or frames) else None
    if isinstance(exc, SyntaxError) and exc.filename:
        location = f"{exc.filename}:{exc.lineno}"
    else:
        location = f"{chosen.filename}:{chosen.lineno}" if chosen else ""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return BrokenPlugin(plugin, dist, version, _describe_error(exc), location, text)


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
        for ep in discovery.entry_points(ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.get_plugin(ep.name) is not None:
                continue
            dist_name, dist_version = ep.dist_name, ep.dist_version
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                broken.append(_broken(ep.name, dist_name, dist_version, exc, ep.module))
                continue
            dist_of[ep.name] = (dist_name, dist_version)

    for plugin in extra_plugins:
        name = pm.register(plugin)
        if name is not None:
            dist_of.setdefault(name, (None, None))

    # Hooks no spec declares (register_retriever for register_retrievers): the plugin is
    # broken, with a suggestion, rather than silently ignored.
    for plugin_name, hooks in unknown_hooks(pm).items():
        known = [n for n in dir(hookspecs) if n.startswith(("register_", "loyaltylens_"))]
        dist_name, dist_version = dist_of.get(plugin_name, (None, None))
        hint = suggest(hooks[0], known)
        broken.append(BrokenPlugin(plugin_name, dist_name, dist_version,
                                   f"implements {hooks[0]!r}, which is not a loyaltylens hook{hint}"))
        plugin = pm.get_plugin(plugin_name)
        if plugin is not None:
            pm.unregister(plugin)
    pm.check_pending()

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
                broken.append(_broken(plugin_name, dist_name, dist_version, exc))
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

    guard_event_listeners(pm)
    if os.environ.get("LOYALTYLENS_TRACE_PLUGINS"):
        trace_hook_calls(pm)
    return Registry(pm, implementations, broken, conflicts)


EVENT_HOOKS = ("loyaltylens_after_stage", "loyaltylens_after_run", "loyaltylens_after_batch")


def guard_event_listeners(pm: pluggy.PluginManager) -> None:
    """A listener on an event hook must never fail a run: wrap each plain implementation
    so an exception is reported on stderr and the remaining listeners still run.
    (Wrappers, ``wrapper=True``, are generators that pluggy drives itself: left alone.)"""
    for hook_name in EVENT_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.wrapper or impl.hookwrapper or getattr(impl.function, "_loyaltylens_guarded", False):
                continue
            impl.function = _guarded(hook_name, impl.plugin_name, impl.function)


def _guarded(hook_name: str, plugin_name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    import functools
    import sys

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - an observer must not break a run
            print(f"warning: {hook_name} in plugin {plugin_name!r} raised {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return None

    call._loyaltylens_guarded = True  # type: ignore[attr-defined]
    return call


def trace_hook_calls(pm: pluggy.PluginManager) -> None:
    """LOYALTYLENS_TRACE_PLUGINS=1: every hook call, its plugins and its time, on stderr."""
    import sys
    import time

    started: dict[int, float] = {}

    def before(hook_name: str, impls: Any, kwargs: Any) -> None:
        started[id(kwargs)] = time.perf_counter()

    def after(outcome: Any, hook_name: str, impls: Any, kwargs: Any) -> None:
        ms = (time.perf_counter() - started.pop(id(kwargs), time.perf_counter())) * 1000
        names = ", ".join(i.plugin_name for i in impls) or "none"
        print(f"loyaltylens: hook {hook_name} ({names}) {ms:.3f} ms", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def unknown_hooks(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """plugin name -> hooks it implements that no spec declares (a misspelt hook would
    otherwise be ignored without a word: pluggy's check_pending)."""
    found: dict[str, list[str]] = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            found.setdefault(impl.plugin_name, []).append(name)
    return found


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
