"""Errors a user can act on.

Every error the CLI shows is a ``LoyaltyLensError``: one line saying what was wrong
and what to do. Anything else is a bug and gets a traceback only with ``--debug``.
"""

from __future__ import annotations


class LoyaltyLensError(Exception):
    """An error with a message fit for one line of terminal output."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # What `--debug` prints instead of our own traceback when it says more (a broken
        # plugin's import traceback, from where the plugin failed, not where we noticed).
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message}. {self.hint}" if self.hint else self.message


class UsageError(LoyaltyLensError):
    """Bad input from the user: an id, a flag, a file."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration names something that does not exist or does not validate."""


class CustomerNotFound(UsageError):
    """The feature store has no row for this customer id."""


class PluginError(LoyaltyLensError):
    """A plugin failed to load, to build, or broke its stage contract."""

    exit_code = 3


class ContractViolation(PluginError):
    """A component returned something that does not match its stage contract."""


class StageError(LoyaltyLensError):
    """A stage failed at run time (backend down, model missing, ...)."""

    exit_code = 4


class PluginFault(StageError):
    """A component raised something other than a LoyaltyLensError while its stage ran:
    a bug or an unreported backend failure in the plugin. It names the stage and the
    plugin (``stage``, ``plugin`` attributes, which ``serve`` counts in /metrics); the
    plugin's own exception is its ``__cause__``, shown with ``--debug``."""

    def __init__(self, stage: str, plugin: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.stage, self.plugin = stage, plugin
