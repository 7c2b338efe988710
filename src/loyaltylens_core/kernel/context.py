"""What a stage factory gets besides its settings: where to keep files, the seed,
progress bars, and lazy access to other stages (a retriever asks for the embedder)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from loyaltylens_core.util.progress import Progress


@dataclasses.dataclass
class StageContext:
    stage: str
    name: str
    data_dir: Path
    seed: int
    progress: Progress
    demo_customers: int
    _component: Callable[[str], Any]
    _named: Callable[[str, str], Any] | None = None
    # True in service workers: open stores read-only, never seed, train or index (the
    # parent process prepared the data dir before starting them).
    read_only: bool = False
    demo_drift: bool = False

    def component(self, stage: str) -> Any:
        """Another stage's component, built on first use (e.g. the embedder)."""
        return self._component(stage)

    def fallback(self, stage: str, name: str) -> Any:
        """A named implementation of a stage, built with its own settings, for plugins
        that fall back to another (e.g. an LLM generator to templates, a remote
        retriever to the embedded one). Fails like ``--use`` if it is not installed."""
        if self._named is None:
            raise LookupError("this context cannot build fallback components")
        return self._named(stage, name)

    def plugin_dir(self) -> Path:
        """A directory this implementation owns inside the data dir."""
        path = self.data_dir / f"{self.stage}-{self.name}"
        path.mkdir(parents=True, exist_ok=True)
        return path
