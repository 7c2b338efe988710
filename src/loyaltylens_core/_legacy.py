"""The module paths of the flat core before the layers (0.1): each still imports, as the
module that replaced it, with a DeprecationWarning naming the new path. Kept for one
release (docs/architecture.md); nothing in this repository uses them."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED: dict[str, str] = {
    "adapters": "kernel.adapters", "components": "kernel.components", "config": "kernel.config",
    "context": "kernel.context", "errors": "kernel.errors", "events": "kernel.events",
    "experiments": "kernel.experiments", "hookspecs": "kernel.hookspecs", "pipeline": "kernel.pipeline",
    "plugins": "kernel.registry", "rows": "kernel.rows", "stages": "kernel.stages", "impressions": "kernel.feedback",
    "archive": "sdk.archive", "metrics": "sdk.quality", "model_versions": "sdk.model_versions",
    "offers": "sdk.offers", "testing": "sdk.testing", "demo": "sdk.demo", "serving": "sdk.serving",
    "drift": "loop.drift", "outcomes": "loop.outcomes", "report": "loop.report", "report_html": "loop.report_html",
    "asgi": "util.asgi", "atomic": "util.atomic", "httpserver": "util.httpserver", "progress": "util.progress",
    "uvicorn_http": "util.uvicorn_http", "render": "cli.render", "scaffold": "cli.scaffold",
}
PACKAGE = "loyaltylens_core"


def moved_module(old: str) -> types.ModuleType:
    """The module that replaced ``loyaltylens_core.<old>``, after a warning that says so."""
    new = f"{PACKAGE}.{MOVED[old]}"
    warnings.warn(f"{PACKAGE}.{old} moved to {new}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return moved_module(spec.name.rpartition(".")[2])

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is the new one, already executed."""


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Finds ``loyaltylens_core.<old>`` for the old names only; everything else is
    left to the normal finders."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        head, _, old = fullname.rpartition(".")
        if head != PACKAGE or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader())


def install() -> None:
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyFinder())
