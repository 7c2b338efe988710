"""The ``loyaltylens`` command.

Only typer is imported at module level: ``loyaltylens --help`` must stay fast, so each
command imports what it needs. Every ``LoyaltyLensError`` becomes one line on stderr and
its exit code; anything else is a bug, shown as one line unless ``--debug`` asks for the
traceback.
"""

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
features_app = typer.Typer(help="Copy feature snapshots to an online store (e.g. Redis).", no_args_is_help=True)
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


@app.callback()
def _global(
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Path to loyaltylens.toml (default: ./loyaltylens.toml or $LOYALTYLENS_CONFIG)."
    ),
    use: list[str] = typer.Option(
        [], "--use", "-u", help="Select a plugin for a stage, e.g. --use retriever=weaviate (repeatable)."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    state.config = config
    state.use = list(use)
    state.debug = debug or bool(os.environ.get("LOYALTYLENS_DEBUG"))
    state.quiet = quiet


def _pipeline(needed: tuple[str, ...] | None = None) -> "Pipeline":
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


def _close_pipelines() -> None:
    """Close every component the command opened (database files, clients): exit paths
    included, so a remote client's threads and a DuckDB file's lock end with the command."""
    while state.opened:
        state.opened.pop().close()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def run(
    customer_id: str = typer.Argument(..., help="Loyalty customer id, e.g. C001."),
    as_json: bool = typer.Option(False, "--json", help="Print the PipelineResult as JSON."),
    placement: Optional[str] = typer.Option(
        None, "--placement", help="The placement to decide for ([placements.NAME]; default: the `placement` setting)."
    ),
) -> None:
    """Score one customer, decide which offers they may get and write the copy for the best."""
    from loyaltylens_core.kernel.contracts import validate_customer_id

    validate_customer_id(customer_id)
    pipeline = _pipeline()
    pipeline.config.placement(placement)  # an unknown placement fails before anything is built
    pipeline.prepare()
    result = pipeline.run(customer_id, placement=placement)
    if as_json:
        _print_json(result.to_json_dict())
        return
    from loyaltylens_core.cli.render import result_panel

    from rich.console import Console

    Console().print(result_panel(result))


@app.command()
def plugins(
    as_json: bool = typer.Option(
        False, "--json", help="Print as JSON, with the capabilities each active plugin's component declares."
    ),
) -> None:
    """List installed plugins: stage, name, distribution, version, status."""
    from loyaltylens_core.kernel.config import load_config
    from loyaltylens_core.kernel.registry import load_registry

    registry = load_registry()
    try:
        selected = load_config(state.config, use=state.use).stages
    except Exception:  # noqa: BLE001 - a bad config must not hide the plugin list
        from loyaltylens_core.kernel.stages import DEFAULT_STAGES

        selected = dict(DEFAULT_STAGES)
    rows = []
    for stage, impls in registry.implementations.items():
        for impl in impls.values():
            active = selected.get(stage) is not None and registry.find(stage, selected[stage]) is impl
            rows.append({
                "stage": stage,
                "name": impl.name,
                "distribution": impl.distribution,
                "version": impl.version,
                "status": "active" if active else "installed",
                "description": impl.description,
            })
    for broken in registry.broken:
        rows.append({
            "stage": "?",
            "name": broken.plugin,
            "distribution": broken.distribution,
            "version": broken.version,
            "status": f"broken: {broken.error}",
            "description": "",
        })
    if as_json:
        _add_capabilities(rows)
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="loyaltylens plugins")
    for column in ("stage", "name", "distribution", "version", "status"):
        table.add_column(column)
    for row in rows:
        status = str(row["status"])
        style = "red" if status.startswith("broken") else "green" if row["status"] == "active" else None
        table.add_row(row["stage"], row["name"], row["distribution"] or "-", row["version"] or "-",
                      row["status"], style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped output: never truncate names
    console.print(table)


def _add_capabilities(rows: list[dict[str, Any]]) -> None:
    """Each active plugin's component is built (not prepared: no data, training or index
    work) to list the optional capabilities it declares (contracts.CAPABILITIES). A
    component that cannot be built says why instead."""
    from loyaltylens_core.kernel.errors import LoyaltyLensError
    from loyaltylens_core.kernel.pipeline import Pipeline

    try:
        pipeline = Pipeline.from_config(state.config, use=state.use, needed=())
    except LoyaltyLensError as exc:
        for row in rows:
            row["capabilities"] = None
            row["capabilities_error"] = exc.message if row["status"] == "active" else None
        return
    with pipeline:
        for row in rows:
            row["capabilities"], row["capabilities_error"] = None, None
            if row["status"] != "active":
                continue
            try:
                row["capabilities"] = sorted(pipeline.capabilities(row["stage"]))
            except LoyaltyLensError as exc:
                row["capabilities_error"] = exc.message


@plugin_app.command("new")
def plugin_new(
    name: str = typer.Argument(..., help="The plugin's name, e.g. acme-store (selected with --use STAGE=NAME)."),
    stage: str = typer.Option(..., "--stage", "-s", help="The stage it implements, e.g. retriever."),
    directory: str = typer.Option(".", "--dir", "-d", help="Where to create the package directory."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a ready plugin package: pyproject with the entry point, settings, a component
    that satisfies the stage Protocol, a passing test and a README."""
    from pathlib import Path

    from loyaltylens_core.cli.scaffold import new_plugin

    target, files = new_plugin(name, stage, Path(directory))
    if as_json:
        _print_json({"directory": str(target), "stage": stage, "name": name, "files": [str(f) for f in files]})
        return
    typer.echo(f"wrote {stage} plugin {name!r} to {target} ({len(files)} files)\n"
               f"next: pip install -e '{target}[test]' && pytest {target}")


@config_app.command("show")
def config_show(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Print the resolved configuration, where each value came from, secrets masked."""
    from loyaltylens_core.kernel.config import load_config
    from loyaltylens_core.kernel.registry import load_registry

    config = load_config(state.config, use=state.use)
    registry = load_registry()
    config.validate_against(registry, needed=())
    described = config.describe(registry)
    if as_json:
        _print_json(described)
        return
    from loyaltylens_core.cli.render import config_tree

    from rich.console import Console

    Console().print(config_tree(described))


@app.command()
def seed(
    customers: Optional[int] = typer.Option(
        None, min=10, max=2_000_000, help="How many demo customers (default: demo_customers setting)."
    ),
) -> None:
    """(Re)build the synthetic demo data and the feature store from it."""
    pipeline = _pipeline(needed=("feature_store",))
    demo = _demo_data(pipeline, customers=customers, rebuild=True)
    store = pipeline.component("feature_store")
    rows = store.materialize(rebuild=True) if "Materializable" in pipeline.capabilities("feature_store") else None
    typer.echo(f"demo data: {demo.customers} customers in {demo.directory}"
               + (f"; feature store: {rows} rows" if rows is not None else ""))


def _demo_data(pipeline: "Pipeline", *, customers: Optional[int] = None, rebuild: bool = False) -> Any:
    """The demo dataset of the configured data dir, seed, size and drift (built if needed)."""
    from loyaltylens_core.sdk.demo import ensure_demo_data

    core = pipeline.config.core
    return ensure_demo_data(core.data_dir / "demo", seed=core.seed, customers=customers or core.demo_customers,
                            drift=core.demo_drift, progress=pipeline.progress, rebuild=rebuild)


def _since_option(value: Optional[str]) -> Any:
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


def _date_option(value: Optional[str], flag: str) -> Any:
    """A YYYY-MM-DD option as a date (None stays None); anything else is one usage line."""
    import datetime as dt

    from loyaltylens_core.kernel.errors import UsageError

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not a date", f"use YYYY-MM-DD, e.g. {flag} 2025-06-30") from None


@features_app.command("materialize")
def features_materialize(
    to: Optional[str] = typer.Option(
        None, "--to", help="Online feature store to fill, e.g. redis (default: the selected feature_store)."),
    source: Optional[str] = typer.Option(
        None, "--from", help="Offline store to copy from (default: the online store's `offline` setting)."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Snapshot date YYYY-MM-DD: the latest snapshot on or before it (default: latest)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Write the snapshot even if it is already complete."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Copy a feature snapshot from the offline store to an online one, then switch to it.

    Idempotent: the same snapshot twice writes nothing. A crash mid-way leaves the
    previous snapshot serving; run the command again."""
    from loyaltylens_core.kernel.errors import UsageError

    day = _date_option(as_of, "--as-of")
    if to:
        state.use = [*state.use, f"feature_store={to}"]
    pipeline = _pipeline(needed=("feature_store",))
    target = pipeline.component("feature_store", prepare=False)
    name = pipeline.config.stages["feature_store"]
    if "LoadsSnapshots" not in pipeline.capabilities("feature_store"):
        raise UsageError(f"feature store {name!r} is not an online store that loads snapshots",
                         "pick one that does, e.g. --to redis")
    offline = pipeline.components.named_component("feature_store", source) if source else None
    summary = {"feature_store": name, **target.load_snapshot(offline, as_of=day, rebuild=rebuild)}
    if as_json:
        _print_json(summary)
        return
    did = f"wrote {summary['written']:,} customers" if summary["written"] else "already complete, nothing written"
    now = "now serving" if summary["switched"] else "still serving"
    typer.echo(f"{name}: snapshot {summary['snapshot']} ({summary['as_of']}, {summary['customers']:,} customers) "
               f"{did}; {now} it ({summary['seconds']:.1f} s)")


@app.command()
def monitor(
    reference: Optional[str] = typer.Option(
        None, "--reference", help="Reference snapshot YYYY-MM-DD (default: the one before the current)."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Current snapshot: the latest on or before YYYY-MM-DD (default: the latest)."),
    warning: float = typer.Option(0.1, "--warning", help="PSI from which a feature is a warning."),
    critical: float = typer.Option(0.25, "--critical", help="PSI from which a feature is critical."),
    bins: int = typer.Option(10, "--bins", min=2, max=100, help="Quantile bins of the reference."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Drift between two feature snapshots: PSI per feature and of the score.

    Exit code 0 when every PSI is below --warning, 1 when one reaches it, 2 when one reaches
    --critical, so cron or CI can gate on it."""
    from loyaltylens_core.loop.drift import STATUSES, snapshot_drift
    from loyaltylens_core.kernel.errors import UsageError

    if not 0 < warning < critical:
        raise UsageError(f"--warning {warning:g} and --critical {critical:g} need 0 < warning < critical",
                         "e.g. --warning 0.1 --critical 0.25")
    current_day, reference_day = _date_option(as_of, "--as-of"), _date_option(reference, "--reference")
    pipeline = _pipeline(needed=("feature_store", "propensity"))
    report = snapshot_drift(pipeline, current_day, reference_day, warning=warning, critical=critical, bins=bins)
    if as_json:
        _print_json(report)
    else:
        ref, current = report["reference"], report["current"]
        typer.echo(f"reference {ref['as_of']} ({ref['customers']:,} customers) -> current {current['as_of']} "
                   f"({current['customers']:,}): {report['status']}")
        for name, row in report["features"].items():
            typer.echo(f"  {name:24s} PSI {row['psi']:7.4f}  {row['status']}")
    raise typer.Exit(STATUSES.index(report["status"]))


@feedback_app.command("import")
def feedback_import(
    path: str = typer.Argument(..., help="CSV or Parquet: impression_id, event[, rating][, time]."),
    rejects: Optional[str] = typer.Option(None, "--rejects", help="Where bad rows go (default <file stem>.rejects.csv)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 2 when any row was rejected (good rows are still kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Import outcomes (viewed, clicked, redeemed, dismissed): idempotent on (impression, event).

    Good rows are kept; bad rows and rows naming no recorded impression are listed by
    line in the rejects file."""
    from pathlib import Path

    from loyaltylens_core.loop.outcomes import first_rejects, import_file

    pipeline = _pipeline(needed=("feedback_store",))
    summary = import_file(pipeline.component("feedback_store"), Path(path), Path(rejects) if rejects else None)
    if as_json:
        _print_json(summary.to_dict())
    else:
        typer.echo(f"{summary.rows:,} rows: {summary.added:,} added, {summary.duplicates:,} already held, "
                   f"{summary.rejected:,} rejected ({summary.seconds:.2f} s)")
    if summary.rejects_file is not None:
        for line in first_rejects(summary.rejects_file):
            typer.echo(f"  {line}", err=True)
        typer.echo(f"rejected rows: {summary.rejects_file}", err=True)
        if strict:
            raise typer.Exit(2)


@feedback_app.command("demo")
def feedback_demo(
    customers: Optional[int] = typer.Option(None, "--customers", min=1, help="How many demo customers (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Close the loop on the demo data: hand every demo customer an offer (recording the
    impressions), draw what they did from the demo's ground truth, and import it.

    Adds the demo experiment demo_reminder (control / reminder, 50/50) unless configured;
    its reminder variant has a planted +25% redemption lift for `loyaltylens report` to find."""
    from pathlib import Path

    from loyaltylens_core.loop.demo_outcomes import EXPERIMENT, experiment, simulate
    from loyaltylens_core.loop.impressions import recorder_of
    from loyaltylens_core.kernel.errors import UsageError
    from loyaltylens_core.kernel.feedback import from_results
    from loyaltylens_core.loop.outcomes import import_file

    pipeline = _pipeline()
    recorder = recorder_of(pipeline)
    if recorder is None:
        raise UsageError("impressions are not recorded (record_impressions = false)",
                         "set record_impressions = true in loyaltylens.toml")
    pipeline.config.experiments.setdefault(EXPERIMENT, experiment())
    recorder.source = "demo"
    pipeline.prepare()
    store = pipeline.component("feature_store")
    ids = list(store.customer_ids())[:customers]
    results: list[Any] = []
    with pipeline.progress.task("Offers for demo customers", total=len(ids)) as advance:
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            results.extend(r for r in pipeline.run_many(chunk) if not isinstance(r, Exception))
            advance(len(chunk))
    recorder.flush()
    if not results:
        raise UsageError("no demo customer got an offer", "check `loyaltylens run C001`")
    core = pipeline.config.core
    demo = _demo_data(pipeline)
    impressions = from_results(results, "demo")
    try:
        outcomes = simulate(impressions, demo, results[0].features.as_of, seed=core.seed)
    except ValueError as exc:
        raise UsageError(str(exc), "feedback demo works on the demo data only") from None
    folder = Path(core.data_dir) / "demo-outcomes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"outcomes-{impressions['shown_at'][0].as_py():%Y%m%dT%H%M%S}.parquet"
    import pyarrow.parquet as pq

    pq.write_table(outcomes.rename_columns(["impression_id", "event", "rating", "time"]), path)
    summary = import_file(pipeline.component("feedback_store"), path)
    out = {"customers": len(ids), "impressions": impressions.num_rows, "outcomes_file": str(path),
           **{k: v for k, v in summary.to_dict().items() if k in ("rows", "added", "duplicates", "rejected")}}
    if as_json:
        _print_json(out)
        return
    typer.echo(f"{out['impressions']:,} impressions, {out['added']:,} outcomes imported from {path}\n"
               f"next: loyaltylens report")


@app.command()
def report(
    since: Optional[str] = typer.Option(
        None, "--since", help="Only impressions shown from YYYY-MM-DD or an ISO date-time (UTC unless it says)."),
    source: Optional[str] = typer.Option(None, "--source", help="Only impressions from run, serve, batch or demo."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write an HTML report with plots to this file."),
    drift: bool = typer.Option(False, "--drift", help="Add `monitor`'s drift (latest snapshot vs the one before)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Redemption per experiment variant (95% CI, lift vs control), propensity calibration
    (by score decile, Brier, AUC on outcomes), and redemption by offer category and tier."""
    import datetime as dt
    from pathlib import Path

    from loyaltylens_core.loop.report import build_report, render_text

    when = _since_option(since)
    pipeline = _pipeline(needed=("feedback_store", "feature_store", "propensity") if drift else ("feedback_store",))
    table = pipeline.component("feedback_store").impressions_with_outcomes(when)
    if source:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table["source"], source))
    result = build_report(table, pipeline.config.experiments)
    if drift:
        from loyaltylens_core.loop.drift import snapshot_drift

        result["drift"] = snapshot_drift(pipeline)
    if html:
        from loyaltylens_core.loop.report_html import write_html

        write_html(result, Path(html))
    if as_json:
        _print_json(result)
    else:
        typer.echo(render_text(result))
        if html:
            typer.echo(f"HTML report: {html}")


@app.command()
def train(as_json: bool = typer.Option(False, "--json", help="Print the model card as JSON.")) -> None:
    """Train a new version of the propensity model and print its metrics (logged to the
    selected tracking plugin: a local JSON-lines log by default, --use tracking=mlflow)."""
    pipeline = _pipeline(needed=("feature_store", "propensity", "tracking"))
    model = pipeline.component("propensity", prepare=False)
    if "Trainable" not in pipeline.capabilities("propensity"):
        from loyaltylens_core.kernel.errors import UsageError

        raise UsageError(
            f"propensity plugin {pipeline.config.stages['propensity']!r} cannot be trained here",
            "train it with its own tooling",
        )
    tracker = pipeline.component("tracking")  # built first: a bad tracker config fails before training
    card = model.train()
    card["tracking"] = _log_training(pipeline, model, tracker, card)
    if as_json:
        _print_json(card)
        return
    from loyaltylens_core.sdk.quality import summary_line

    headline = card.get("evaluation", {}).get("headline", "test")
    metrics = card.get("metrics", {}).get(headline, {})
    calibration = card.get("calibration", {}).get("method")
    role = card.get("role")
    typer.echo(
        f"trained {card.get('model_version')} on {headline}: {summary_line(metrics)}"
        + (f"; calibration: {calibration}" if calibration else "")
        + (f"; {role}" if role else "")
        + (f" (serving stays with the champion: `loyaltylens promote {card.get('model_version')}`)"
           if role == "challenger" else "")
    )
    tracking = card["tracking"]
    if tracking:
        typer.echo(f"tracked in {pipeline.config.stages['tracking']}: "
                   + ", ".join(f"{k} {v}" for k, v in tracking.items() if v is not None))


def _log_training(pipeline: Any, model: Any, tracker: Any, card: dict[str, Any]) -> dict[str, Any]:
    """The finished run to the tracker. The version is saved already: a tracker that fails
    says so in one line without hiding that (the run can be logged again by retraining)."""
    from loyaltylens_core.kernel.config import mask_urls
    from loyaltylens_core.kernel.errors import LoyaltyLensError, StageError

    version = card.get("model_version")
    model_dir = model.models.directory / version if "VersionedModels" in pipeline.capabilities("propensity") else None
    name = pipeline.config.stages["tracking"]
    try:
        logged: dict[str, Any] = tracker.log_training(card, model_dir)
    except LoyaltyLensError as exc:
        raise StageError(f"{version} is trained and saved, but tracker {name!r} failed: {mask_urls(exc.message)}",
                         exc.hint or "check the tracker's settings") from None
    except Exception as exc:  # noqa: BLE001 - a tracker's own errors, one line
        detail = mask_urls(" ".join(str(exc).split()))[:300]
        raise StageError(f"{version} is trained and saved, but tracker {name!r} failed: {type(exc).__name__}: {detail}",
                         "check the tracker's settings (tracking URI, credentials); `loyaltylens models` lists the version") from None
    return logged


def _model_store() -> Any:
    """The selected propensity plugin's versions (capability VersionedModels)."""
    from loyaltylens_core.kernel.errors import UsageError

    pipeline = _pipeline(needed=("propensity",))
    model = pipeline.component("propensity", prepare=False)
    if "VersionedModels" not in pipeline.capabilities("propensity"):
        raise UsageError(f"propensity plugin {pipeline.config.stages['propensity']!r} keeps no model versions here",
                         "manage its versions with its own tooling")
    return model.models


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the versions as JSON.")) -> None:
    """List the propensity model's versions: role (champion / challenger) and held-out metrics."""
    rows = _model_store().listing()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        typer.echo("no trained versions yet: `loyaltylens train`")
    for row in rows:
        metrics = "  ".join(f"{k.upper()} {row[k]:.4f}" for k in ("auc", "brier", "ece") if row.get(k) is not None)
        typer.echo(f"{row['version']:16s} {row['role']:10s} {metrics}  data {row['training_data_hash']}  "
                   f"{row['created_at']}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="The challenger to make the champion, e.g. propensity_v2."),
    force: bool = typer.Option(False, "--force", help="Promote even if it does not beat the champion."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make a version the champion if it beats the current one on the same held-out window."""
    result = _model_store().promote(version, force=force)
    if as_json:
        _print_json(result)
        return
    typer.echo(f"{result['champion']} is the champion (was {result['previous'] or 'none'}; "
               f"{'forced' if result['forced'] else result['comparison']})")


@app.command()
def rollback(as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Return to the previous champion."""
    result = _model_store().rollback()
    if as_json:
        _print_json(result)
        return
    typer.echo(f"{result['champion']} is the champion again (was {result['previous']})")


@app.command()
def index(
    rebuild: bool = typer.Option(False, "--rebuild", help="Re-embed everything, not only what changed."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Index the offer catalogue in the selected retriever: what changed, or everything with --rebuild."""
    pipeline = _pipeline(needed=("retriever",))
    retriever = pipeline.component("retriever", prepare=False)
    if "Indexable" not in pipeline.capabilities("retriever"):
        from loyaltylens_core.kernel.errors import UsageError

        raise UsageError(
            f"retriever plugin {pipeline.config.stages['retriever']!r} has no index step",
            "it indexes on its own",
        )
    count = retriever.index(rebuild=rebuild)
    details = dict(getattr(retriever, "last_index", None) or {})
    if as_json:
        _print_json({"retriever": pipeline.config.stages["retriever"], "offers": count, **details})
        return
    changed = f" ({details['embedded']} embedded, {details['kept']} unchanged)" if "embedded" in details else ""
    typer.echo(f"indexed {count} offers with retriever {pipeline.config.stages['retriever']!r}{changed}")


@app.command()
def batch(
    out: str = typer.Option(..., "--out", "-o", help="Results file (.parquet)."),
    all_customers: bool = typer.Option(False, "--all", help="Every customer in the feature store."),
    ids: Optional[str] = typer.Option(None, "--ids", help="File with one customer id per line."),
    chunk_size: int = typer.Option(10_000, min=1, max=1_000_000, help="Customers per written chunk."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing result or unfinished batch."),
    strict: bool = typer.Option(False, "--strict", help="Exit 2 when any customer was not found (still writes the rest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    placement: Optional[str] = typer.Option(
        None, "--placement", help="The placement every customer is decided for (default: the `placement` setting)."
    ),
) -> None:
    """Run many customers through the batched stage methods; resumable after any interruption.

    Customers the feature store does not know go to <out stem>.rejects.csv (id, line,
    reason) and the batch goes on; malformed ids in --ids are refused up front."""
    from pathlib import Path

    from loyaltylens_core.batch import read_ids, run_batch
    from loyaltylens_core.kernel.errors import UsageError
    from loyaltylens_core.util.progress import Progress

    if all_customers == (ids is not None):
        raise UsageError("pass exactly one of --all or --ids FILE", "e.g. loyaltylens batch --all --out r.parquet")
    from loyaltylens_core.kernel.stages import RUN_STAGES

    pipeline = _pipeline(needed=(*RUN_STAGES, "batch_engine"))
    pipeline.config.placement(placement)  # an unknown placement fails before the slow prepare
    customer_ids, lines = read_ids(Path(ids)) if ids is not None else (None, None)  # before the slow prepare
    pipeline.prepare()
    if customer_ids is None:
        if "ListsCustomers" not in pipeline.capabilities("feature_store"):
            raise UsageError(
                f"feature store {pipeline.config.stages['feature_store']!r} cannot list its customers",
                "pass --ids FILE instead of --all",
            )
        customer_ids = list(pipeline.component("feature_store").customer_ids())
    summary = run_batch(
        pipeline, customer_ids, Path(out), chunk_size=chunk_size, overwrite=overwrite,
        progress=Progress(quiet=state.quiet), lines=lines, config_path=state.config, use=state.use,
        placement=placement,
    )
    data = {
        "out": str(summary.out), "customers": summary.customers, "computed": summary.computed,
        "resumed": summary.resumed, "seconds": round(summary.seconds, 3),
        "customers_per_second": round(summary.per_second, 1), "rejects": summary.rejects,
        "rejects_file": str(summary.rejects_file) if summary.rejects_file else None,
        "engine": summary.engine, "workers": summary.workers,
    }
    if as_json:
        _print_json(data)
    else:
        typer.echo(
            f"wrote {summary.customers} results to {summary.out} "
            f"({summary.computed} computed at {summary.per_second:,.0f}/s, {summary.resumed} resumed)"
            + (f"; {summary.rejects} customers not found, listed in {summary.rejects_file}" if summary.rejects else "")
        )
    if strict and summary.rejects:
        raise UsageError(
            f"{summary.rejects} customers were not found (--strict)",
            f"see {summary.rejects_file}; the other results are in {summary.out}",
        )


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", min=0, max=65535, help="Port (default 8000)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, max=64, help="Worker processes (default 1)."),
    api_keys_file: Optional[str] = typer.Option(None, "--api-keys-file", help="File of name:key lines."),
) -> None:
    """Serve offers over HTTP (FastAPI + uvicorn): /v1/offers, /v1/score, /readyz, /metrics, /docs."""
    from loyaltylens_core.kernel.config import load_config
    from loyaltylens_core.service.server import resolve_settings, serve as run_server
    from loyaltylens_core.service.settings import ServeOptions

    config = load_config(state.config, use=state.use)
    settings = resolve_settings(config.serve, {
        "host": host, "port": port, "workers": workers, "api_keys_file": api_keys_file,
    })
    options = ServeOptions(config=state.config, use=list(state.use), settings=settings.model_dump(mode="json"))
    run_server(options, settings, quiet=state.quiet)


TARGET_OPTION = typer.Option(None, "--target", "-t", help="Deploy target plugin (default: deploy_target stage).")


def _deploy_pipeline(target: Optional[str], needed: tuple[str, ...]) -> "Pipeline":
    if target:
        state.use = [*state.use, f"deploy_target={target}"]
    return _pipeline(needed=needed)


def _default_archive(pipeline: "Pipeline") -> Any:
    return pipeline.config.core.data_dir / "deploy" / "model.tar.gz"


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(data)
    else:
        for key, value in data.items():
            typer.echo(f"{key}: {value}")


@deploy_app.command("package")
def deploy_package(
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Archive path (default <data_dir>/deploy/model.tar.gz)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the trained propensity model (TorchScript + code/inference.py) into model.tar.gz."""
    from pathlib import Path

    from loyaltylens_core.sdk.archive import build_archive

    pipeline = _pipeline(needed=("propensity",))
    path = Path(out) if out else _default_archive(pipeline)
    spec = build_archive(pipeline.component("propensity"), path)
    _emit({"archive": str(path), "model_version": spec.get("model_version"), "bytes": path.stat().st_size}, as_json)


@deploy_app.command("up")
def deploy_up(
    target: Optional[str] = TARGET_OPTION,
    archive: Optional[str] = typer.Option(None, "--archive", help="Use this archive instead of packaging now."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create (or update) the endpoint from the archive and wait until it serves."""
    from pathlib import Path

    from loyaltylens_core.sdk.archive import build_archive

    if archive:
        pipeline = _deploy_pipeline(target, ("deploy_target",))
        path = Path(archive)
    else:
        pipeline = _deploy_pipeline(target, ("propensity", "deploy_target"))
        path = _default_archive(pipeline)
        build_archive(pipeline.component("propensity"), path)
    _emit(pipeline.component("deploy_target").up(path), as_json)


@deploy_app.command("invoke")
def deploy_invoke(
    customer_id: str = typer.Argument(..., help="Customer whose features are sent to the endpoint."),
    target: Optional[str] = TARGET_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score one customer's current features on the deployed endpoint."""
    from loyaltylens_core.kernel.contracts import validate_customer_id

    validate_customer_id(customer_id)
    pipeline = _deploy_pipeline(target, ("feature_store", "deploy_target"))
    features = pipeline.component("feature_store").read_latest(customer_id)
    reply = dict(pipeline.component("deploy_target").invoke(features))
    reply["customer_id"] = customer_id
    _emit(reply, as_json)


@deploy_app.command("status")
def deploy_status(target: Optional[str] = TARGET_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the endpoint's state."""
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    _emit(pipeline.component("deploy_target").status(), as_json)


@deploy_app.command("down")
def deploy_down(target: Optional[str] = TARGET_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """Tear the endpoint down (and everything `up` created for it)."""
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    _emit(pipeline.component("deploy_target").down(), as_json)


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
            _close_pipelines()
        if isinstance(code, int) and code:
            sys.exit(code)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except LoyaltyLensError as exc:
        if state.debug:
            import traceback

            # A plugin that failed to import: its own traceback says more than ours.
            detail = getattr(exc, "detail_traceback", "")
            print(detail, file=sys.stderr, end="") if detail else traceback.print_exc()
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
