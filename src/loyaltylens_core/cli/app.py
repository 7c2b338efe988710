"""The ``loyaltylens`` typer app, its sub-apps and what every command shares: the global
options, the pipeline a command opens (closed by ``main`` on the way out) and JSON output.

Only typer is imported at module level: ``loyaltylens --help`` must stay fast."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline


app = typer.Typer(
    name="loyaltylens",
    help="Turn a loyalty customer id into a personalised offer. Every stage is a plugin.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)

app.add_typer(config_app, name="config")

deploy_app = typer.Typer(
    help="Package the propensity model and ship it to an endpoint (local, sagemaker, vertex).",
    no_args_is_help=True,
)

app.add_typer(deploy_app, name="deploy")

plugin_app = typer.Typer(help="Write your own stage plugins.", no_args_is_help=True)

app.add_typer(plugin_app, name="plugin")

features_app = typer.Typer(help="Copy feature snapshots to an online store (Redis) or out as tables (Delta Lake).",
                            no_args_is_help=True)

app.add_typer(features_app, name="features")

feedback_app = typer.Typer(help="Outcomes of the offers handed out (impressions).", no_args_is_help=True)

app.add_typer(feedback_app, name="feedback")

class State:
    config: Optional[str] = None
    use: list[str] = []
    debug: bool = False
    quiet: bool = False
    opened: list["Pipeline"] = []  # closed by main() on the way out, whatever happened


state = State()


def flag(*names: str, help: str) -> Any:
    """A switch (default off). Typer would show it as ``--json <bool>`` in --help, which
    reads as if it took a value; a switch takes none, so it shows none."""
    return typer.Option(False, *names, help=help, metavar="")


@app.callback()
def _global(
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Path to loyaltylens.toml (default: ./loyaltylens.toml or $LOYALTYLENS_CONFIG)."
    ),
    use: list[str] = typer.Option(
        [], "--use", "-u", help="Select a plugin for a stage, e.g. --use retriever=weaviate (repeatable)."
    ),
    debug: bool = flag("--debug", help="Show tracebacks for errors."),
    quiet: bool = flag("--quiet", "-q", help="No progress bars."),
) -> None:
    state.config = config
    state.use = list(use)
    state.debug = debug or bool(os.environ.get("LOYALTYLENS_DEBUG"))
    state.quiet = quiet


def pipeline_for(needed: tuple[str, ...] | None = None) -> "Pipeline":
    from loyaltylens_core.kernel.pipeline import RUN_STAGES
    from loyaltylens_core.loop.impressions import open_pipeline
    from loyaltylens_core.util.progress import Progress

    pipeline = open_pipeline(
        state.config,
        use=state.use,
        progress=Progress(quiet=state.quiet),
        needed=needed if needed is not None else RUN_STAGES,
    )
    state.opened.append(pipeline)
    return pipeline


def close_pipelines() -> None:
    """Close every component the command opened (database files, clients): exit paths
    included, so a remote client's threads and a DuckDB file's lock end with the command."""
    while state.opened:
        state.opened.pop().close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
    else:
        for key, value in data.items():
            typer.echo(f"{key}: {value}")


def demo_data_of(pipeline: "Pipeline", *, customers: Optional[int] = None, rebuild: bool = False) -> Any:
    """The demo dataset of the configured data dir, seed, size and drift (built if needed)."""
    from loyaltylens_core.sdk.demo import demo_data_of as of_config

    return of_config(pipeline.config.core, pipeline.progress, customers=customers, rebuild=rebuild)


def since_option(value: Optional[str]) -> Any:
    """--since as a UTC datetime: a date means its midnight UTC; a date-time without an
    offset is UTC."""
    import datetime as dt

    from loyaltylens_core.kernel.errors import UsageError
    from loyaltylens_core.loop.outcomes import as_utc

    if value is None:
        return None
    try:
        return as_utc(dt.datetime.fromisoformat(value.strip()))
    except ValueError:
        raise UsageError(f"--since {value!r} is not a date or date-time",
                         "write YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]") from None


def date_option(value: Optional[str], flag: str) -> Any:
    """A YYYY-MM-DD option as a date (None stays None); anything else is one usage line."""
    import datetime as dt

    from loyaltylens_core.kernel.errors import UsageError

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not a date", f"use YYYY-MM-DD, e.g. {flag} 2025-06-30") from None
