"""A pipeline's components: built from the configured plugins on first use, checked
against their stage Protocol, prepared once, held to the contracts, and closed.

A ``Pipeline`` (pipeline.py) has one of these and adds what joins the stages; this is
everything about one stage at a time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from loyaltylens_core.kernel.config import Config
from loyaltylens_core.kernel.context import StageContext
from loyaltylens_core.kernel.contracts import STAGE_PROTOCOLS, PluginRef, capabilities_of
from loyaltylens_core.kernel.errors import ContractViolation, LoyaltyLensError, PluginError, PluginFault, UsageError
from loyaltylens_core.kernel.registry import Implementation, Registry, check_protocol
from loyaltylens_core.util.progress import QUIET, Progress
from loyaltylens_core.kernel.stages import RUN_STAGES

M = TypeVar("M", bound=BaseModel)


class Components:
    """The configured stages' components, built lazily."""

    def __init__(
        self, config: Config, registry: Registry, progress: Progress = QUIET, *, read_only: bool = False,
        parent: "Components | None" = None, own: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        # An experiment variant's components: only the stages it changes (``own``) are
        # built here; every other stage is the parent's component, shared.
        self._parent = parent
        self._own = own
        self.registry = registry
        self.progress = progress
        # Service workers share one data dir that the parent prepared: they only read it.
        self.read_only = read_only
        self._components: dict[str, Any] = {}
        self._capabilities: dict[str, frozenset[str]] = {}  # component key -> capability names
        self._building: set[str] = set()
        self._prepared: set[str] = set()
        self._plugin_refs: dict[str, PluginRef] | None = None

    def close(self) -> None:
        """Close every component that holds a resource (files, connections, clients):
        at CLI exit, service shutdown, and before another process opens the same files."""
        for key, component in list(self._components.items()):
            if "Closeable" in self._capabilities.get(key, ()):
                try:
                    component.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide the real outcome
                    import sys

                    print(f"warning: closing {key} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        self._components.clear()
        self._capabilities.clear()
        self._prepared.clear()

    def __enter__(self) -> "Components":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- components -----------------------------------------------------------------

    def implementation(self, stage: str) -> Implementation:
        return self.registry.get(stage, self.config.stages[stage])

    def plugin_ref(self, stage: str) -> PluginRef:
        impl = self.implementation(stage)
        return PluginRef(name=impl.name, distribution=impl.distribution, version=impl.version)

    def run_plugin_refs(self) -> dict[str, PluginRef]:
        """The run stages' plugins, resolved once: every result carries them, and the
        selection cannot change during the pipeline's life."""
        if self._plugin_refs is None:
            self._plugin_refs = {stage: self.plugin_ref(stage) for stage in RUN_STAGES}
        return self._plugin_refs

    def component(self, stage: str, *, prepare: bool = True) -> Any:
        """The stage's component, built on first use and prepared (data, training,
        index) unless ``prepare=False``: `loyaltylens train` and `index` are about to do
        that work themselves and must not do it twice on a fresh install."""
        if self._parent is not None and stage not in self._own:
            return self._parent.component(stage, prepare=prepare)
        component = self._components.get(stage)
        if component is None:
            component = self._components[stage] = self._build(self.implementation(stage), stage)
        if prepare:
            self._prepare(stage, component)
        return component

    def named_component(self, stage: str, name: str) -> Any:
        """A specific implementation of a stage (a plugin's fallback), built once."""
        impl = self.registry.get(stage, name)
        if impl is self.implementation(stage):
            return self.component(stage)
        key = f"{stage}:{impl.name}"
        if key not in self._components:
            self._components[key] = self._build(impl, key)
        self._prepare(key, self._components[key])
        return self._components[key]

    def capabilities(self, stage: str) -> frozenset[str]:
        """The optional capabilities (contracts.CAPABILITIES) the stage's component declares:
        checked once, when it was built."""
        self.component(stage, prepare=False)
        return self._owner(stage)._capabilities[stage]

    def _owner(self, stage: str) -> "Components":
        """Whose component a stage is: this one's, or the parent's it shares."""
        if self._parent is not None and stage not in self._own:
            return self._parent._owner(stage)
        return self

    def has(self, stage: str, capability: str) -> bool:
        return capability in self._owner(stage)._capabilities.get(stage, ())

    def fallback_reason(self, stage: str) -> str | None:
        """Why the stage's component is serving from its own fallback, if it is (a remote
        retriever answering from the embedded one while its server is down: the
        ``ReportsFallback`` capability). A stage never built here (a batch worker has no
        feature store) has nothing to report."""
        owner = self._owner(stage)
        if "ReportsFallback" not in owner._capabilities.get(stage, ()):
            return None
        component = owner._components.get(stage)
        return component.fallback_reason if component is not None else None

    def _build(self, impl: Implementation, component_key: str) -> Any:
        stage = impl.stage
        key = f"{stage}:{impl.name}"
        if key in self._building:
            raise PluginError(f"{stage} plugin {impl.name!r} depends on itself while being built", "check the plugins")
        settings = self.config.settings_for(impl)
        context = StageContext(
            stage=stage,
            name=impl.name,
            data_dir=self.config.core.data_dir,
            seed=self.config.core.seed,
            progress=self.progress,
            demo_customers=self.config.core.demo_customers,
            demo_drift=self.config.core.demo_drift,
            _component=self.component,
            _named=self.named_component,
            read_only=self.read_only,
        )
        self._building.add(key)
        try:
            with self._plugin_errors(impl):
                component = impl.factory(settings, context)
                check_protocol(component, impl, STAGE_PROTOCOLS[stage])
                self._capabilities[component_key] = frozenset(capabilities_of(component))
        finally:
            self._building.discard(key)
        return component

    def _prepare(self, key: str, component: Any) -> None:
        # Checked once per component: isinstance on a runtime Protocol costs microseconds,
        # and component() runs for every customer of a batch.
        if key in self._prepared:
            return
        if "Preparable" in self._capabilities.get(key, ()):
            stage, _, name = key.partition(":")
            impl = self.registry.get(stage, name) if name else self.implementation(stage)
            with self._plugin_errors(impl):
                component.prepare()
        self._prepared.add(key)

    @contextlib.contextmanager
    def _plugin_errors(self, impl: Implementation) -> Iterator[None]:
        """Anything but our own errors, raised while a plugin starts, names the plugin."""
        try:
            yield
        except LoyaltyLensError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{impl.stage} plugin {impl.name!r} failed to start: {type(exc).__name__}: {exc}",
                "rerun with --debug for the traceback",
            ) from exc

    def prepare(self, stages: Sequence[str] = RUN_STAGES) -> None:
        """Build every stage now (first-use data, training, indexing) rather than lazily."""
        for stage in stages:
            self.component(stage)

    # --- validation -----------------------------------------------------------------

    def expect(self, stage: str, value: Any, model: type[M]) -> M:
        """Validate a plugin's output. An instance is checked field by field again:
        ``model_construct`` skips validation, and a plugin must not get past the contract
        that way. Nested contract instances (an ``Offer`` inside a candidate) are trusted."""
        try:
            # type() first: pydantic's isinstance goes through a slow hasattr.
            if type(value) is model or isinstance(value, model):
                return model.model_validate(value.__dict__)  # dict(model) would probe .keys (slow)
            return model.model_validate(value)
        except ValidationError as exc:
            raise self.violation(stage, model, exc) from None

    def expect_list(self, stage: str, values: Any, model: type[M], seen: dict[int, M] | None = None) -> list[M]:
        """``seen`` (object id -> validated copy), shared across the lists of one call whose
        objects are all alive, validates an object that several lists hold once: a batch
        retriever gives every customer asking the same question the same candidates."""
        if not isinstance(values, (list, tuple)):
            impl = self.implementation(stage)
            raise ContractViolation(
                f"{stage} plugin {impl.name!r} returned {type(values).__name__}, "
                f"expected a list of {model.__name__}",
                "fix the plugin",
            )
        if seen is None:
            return [self.expect(stage, v, model) for v in values]
        out = []
        for value in values:
            checked = seen.get(id(value))
            if checked is None:
                checked = seen[id(value)] = self.expect(stage, value, model)
            out.append(checked)
        return out

    def violation(self, stage: str, model: type[BaseModel] | str, exc: ValidationError) -> ContractViolation:
        impl = self.implementation(stage)
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(whole value)"
        name = model if isinstance(model, str) else model.__name__
        return ContractViolation(
            f"{stage} plugin {impl.name!r} ({impl.distribution or impl.plugin}) broke the "
            f"{name} contract: field {field!r}: {err['msg']}",
            "fix the plugin or select another with --use",
        )

    def calling(self, stage: str) -> "Calling":
        """A plugin that builds a contract itself with a bad value (rank 0, a NaN) raises
        pydantic's ValidationError inside its own code: report it like any contract
        violation, naming the plugin, the stage and the field. Anything else a plugin
        raises that is not one of our errors becomes a ``PluginFault`` naming the stage
        and the plugin (exit 4), with the plugin's exception as its cause."""
        return Calling(self, stage)

    def _fault(self, stage: str, exc: BaseException) -> BaseException | None:
        """What ``calling`` raises instead of ``exc``; None to let it through."""
        if isinstance(exc, ValidationError):
            return self.violation(stage, exc.title, exc)
        if isinstance(exc, LoyaltyLensError) or not isinstance(exc, Exception):
            return None
        impl = self.implementation(stage)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return PluginFault(
            stage, impl.name,
            f"{stage} plugin {impl.name!r} ({impl.distribution or impl.plugin}) failed: "
            f"{type(exc).__name__}: {first}".rstrip(": "),
            "rerun with --debug for the plugin's traceback; fix the plugin or select another with --use",
        )


class Calling:
    """``Components.calling``'s context manager: a class, not @contextmanager, because it
    wraps every stage call of every run (a generator-based one cost ~1.5% of a worker)."""

    __slots__ = ("parts", "stage")

    def __init__(self, parts: Components, stage: str) -> None:
        self.parts = parts
        self.stage = stage

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        fault = self.parts._fault(self.stage, exc)
        if fault is None:
            return
        if isinstance(exc, ValidationError):
            raise fault from None
        raise fault from exc


def ensure_writable(data_dir: Any) -> None:
    """Every stage keeps files in the data dir; say so once, plainly, if it cannot."""
    import os
    import tempfile

    try:
        os.makedirs(data_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"data dir {data_dir} is not writable ({exc.strerror or type(exc).__name__})",
            "set LOYALTYLENS_DATA_DIR or data_dir in loyaltylens.toml to a writable directory",
        ) from None
