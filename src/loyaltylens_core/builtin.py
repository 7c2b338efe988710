"""Implementations the core provides itself: the ``none`` tracker, the default, so that a
stage nobody needs to install still has an answer (`loyaltylens plugins` lists it)."""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl

NAME = "loyaltylens-core"


def version() -> str:
    from . import __version__

    return __version__


class NoTracker:
    """Training runs are kept in the model cards only (``loyaltylens models``)."""

    def log_training(self, card: dict[str, Any], model_dir: Any) -> dict[str, Any]:
        return {}


@hookimpl
def register_trackers(register: Any) -> None:
    register("none", lambda settings, context: NoTracker(),
             description="Training runs are kept in model cards only")
