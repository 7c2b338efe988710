"""The ``loyaltylens`` command.

The app and what commands share are in ``app.py``; the commands, by what they work on, in
``offer_commands``, ``model_commands``, ``loop_commands`` and ``deploy_commands`` (imported
here to register them). Every ``LoyaltyLensError`` becomes one line on stderr and its exit
code; anything else is a bug, shown as one line unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import sys
from typing import Any

# Imported for what they do: each module registers its commands on the app, in this
# order in `loyaltylens --help`.
from loyaltylens_core.cli import offer_commands  # noqa: F401  isort: skip
from loyaltylens_core.cli import model_commands  # noqa: F401  isort: skip
from loyaltylens_core.cli import loop_commands  # noqa: F401  isort: skip
from loyaltylens_core.cli import deploy_commands  # noqa: F401  isort: skip
from loyaltylens_core.cli import campaign_commands  # noqa: F401  isort: skip
from loyaltylens_core.cli.app import app, close_pipelines, state

__all__ = ["app", "main", "state"]


def main() -> None:
    """Console-script entry point: run the app, turn errors into one line and an exit code.

    Typer runs outside its standalone mode so that its usage errors (an unknown option,
    a missing argument) come out here too, as one line rather than a boxed panel.
    """
    from loyaltylens_core.kernel.errors import LoyaltyLensError

    try:
        try:
            code = app(prog_name="loyaltylens", standalone_mode=False)
        finally:
            close_pipelines()
        if isinstance(code, int) and code:
            sys.exit(code)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except LoyaltyLensError as exc:
        if state.debug:
            import traceback

            # A plugin that failed to import: its own traceback says more than ours.
            print(exc.detail, file=sys.stderr, end="") if exc.detail else traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not _is_usage_error(exc):
            _unexpected(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `loyaltylens` alone: the help, as click shows it
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        # typer/click's own usage errors (unknown option, missing argument): one line too.
        print(f"error: {_usage_message(exc)}", file=sys.stderr)
        sys.exit(2)


def _is_usage_error(exc: BaseException) -> bool:
    """click's usage errors (typer vendors click, so match by shape, not import path)."""
    return any(k.__name__ == "UsageError" for k in type(exc).__mro__) and hasattr(exc, "format_message")


def _usage_message(exc: Any) -> str:
    args = sys.argv[1:]
    if type(exc).__name__ == "NoSuchOption" and "run" in args:
        # `loyaltylens run -C001`: an id that starts with '-' reads as an option.
        after = args[args.index("run") + 1 :]
        dashed = next((a for a in after if a.startswith("-") and a[1:2].isalnum()), None)
        if dashed is not None and not dashed.startswith("--"):
            return (f"customer id {dashed!r} is malformed. ids are 1-64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit, e.g. C001")
    command = getattr(getattr(exc, "ctx", None), "command_path", "loyaltylens")
    return f"{exc.format_message().rstrip('.')}. see `{command} --help`"


def _unexpected(exc: BaseException) -> None:
    """Anything that is not a LoyaltyLensError or a usage error: one line and exit 4 for
    an OSError (a path, a permission), exit 1 for a bug; the traceback only with --debug."""
    if isinstance(exc, OSError):
        if state.debug:
            raise exc
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or type(exc).__name__}{where}. check the path and its permissions",
              file=sys.stderr)
        sys.exit(4)
    if state.debug:
        raise exc
    first = (str(exc).strip().splitlines() or [""])[0]
    print(
        f"error: unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
