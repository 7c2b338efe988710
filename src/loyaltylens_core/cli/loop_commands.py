"""Commands that close the loop: feature snapshots, drift, feedback, reports."""

from __future__ import annotations

from typing import Any, Optional

import typer

from loyaltylens_core.cli.app import app, features_app, feedback_app, state, pipeline_for, print_json, demo_data_of, since_option, date_option, flag


@features_app.command("materialize")
def features_materialize(
    to: Optional[str] = typer.Option(
        None, "--to", help="Online feature store to fill, e.g. redis (default: the selected feature_store)."),
    source: Optional[str] = typer.Option(
        None, "--from", help="Offline store to copy from (default: the online store's `offline` setting)."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Snapshot date YYYY-MM-DD: the latest snapshot on or before it (default: latest)."),
    rebuild: bool = flag("--rebuild", help="Write the snapshot even if it is already complete."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
) -> None:
    """Copy a feature snapshot from the offline store to an online one, then switch to it.

    Idempotent: the same snapshot twice writes nothing. A crash mid-way leaves the
    previous snapshot serving; run the command again."""
    from loyaltylens_core.kernel.errors import UsageError

    day = date_option(as_of, "--as-of")
    if to:
        state.use = [*state.use, f"feature_store={to}"]
    pipeline = pipeline_for(needed=("feature_store",))
    target = pipeline.component("feature_store", prepare=False)
    name = pipeline.config.stages["feature_store"]
    if "LoadsSnapshots" not in pipeline.capabilities("feature_store"):
        raise UsageError(f"feature store {name!r} is not an online store that loads snapshots",
                         "pick one that does, e.g. --to redis")
    offline = pipeline.components.named_component("feature_store", source) if source else None
    summary = {"feature_store": name, **target.load_snapshot(offline, as_of=day, rebuild=rebuild)}
    if as_json:
        print_json(summary)
        return
    did = f"wrote {summary['written']:,} customers" if summary["written"] else "already complete, nothing written"
    now = "now serving" if summary["switched"] else "still serving"
    typer.echo(f"{name}: snapshot {summary['snapshot']} ({summary['as_of']}, {summary['customers']:,} customers) "
               f"{did}; {now} it ({summary['seconds']:.1f} s)")


@features_app.command("export")
def features_export(
    to: str = typer.Option(..., "--to", help="Feature store whose tables to write, e.g. delta."),
    path: Optional[str] = typer.Argument(
        None, help="Table location (local path or s3://...); default: the store's configured path."),
    source: str = typer.Option("duckdb", "--from", help="Offline store to read every snapshot from."),
    horizon_days: int = typer.Option(
        30, "--horizon-days", min=1, max=365, help="Label horizon of the training-label table written beside."),
    rebuild: bool = flag("--rebuild", help="Write even if the tables already hold these snapshots."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
) -> None:
    """Write every feature snapshot of the embedded store (and its training labels) as
    another store's tables, e.g. a Delta Lake feature table for Databricks.

    Idempotent: the same snapshots again write nothing. Each table is one commit, so
    readers see the old table or the new one."""
    from loyaltylens_core.kernel.errors import UsageError

    if to == source:
        raise UsageError(f"--to {to} and --from {source} name the same store", "export to another, e.g. --to delta")
    state.use = [*state.use, f"feature_store={to}"]
    pipeline = pipeline_for(needed=("feature_store",))
    if "WritesFeatureTables" not in pipeline.capabilities("feature_store"):
        raise UsageError(f"feature store {to!r} cannot have its tables written by LoyaltyLens", "e.g. --to delta")
    target = pipeline.component("feature_store", prepare=False)
    offline = pipeline.components.named_component("feature_store", source)
    summary = {"feature_store": to, **target.export_from(offline, path, horizon_days=horizon_days, rebuild=rebuild)}
    if as_json:
        print_json(summary)
        return
    snapshots, version = summary["snapshots"], summary.get("version")
    at = f"{summary['path']}" + (f" (version {version})" if version is not None else "")
    if not summary["written"]:
        typer.echo(f"{to}: {at} already holds these {len(snapshots)} snapshots; nothing written")
        return
    labels = f" and {summary['labels']:,} labels" + (f" to {summary['labels_path']}" if summary.get("labels_path") else "")
    typer.echo(f"{to}: wrote {summary['rows']:,} feature rows ({len(snapshots)} snapshots, {snapshots[0]} to "
               f"{snapshots[-1]}) to {at}{labels} ({summary['seconds']:.1f} s)")
    if summary.get("next"):
        typer.echo(f"next: {summary['next']}")


@app.command()
def monitor(
    reference: Optional[str] = typer.Option(
        None, "--reference", help="Reference snapshot YYYY-MM-DD (default: the one before the current)."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Current snapshot: the latest on or before YYYY-MM-DD (default: the latest)."),
    warning: float = typer.Option(0.1, "--warning", help="PSI from which a feature is a warning."),
    critical: float = typer.Option(0.25, "--critical", help="PSI from which a feature is critical."),
    bins: int = typer.Option(10, "--bins", min=2, max=100, help="Quantile bins of the reference."),
    as_json: bool = flag("--json", help="Print the report as JSON."),
) -> None:
    """Drift between two feature snapshots: PSI per feature and of the score.

    Exit code 0 when every PSI is below --warning, 1 when one reaches it, 2 when one reaches
    --critical, so cron or CI can gate on it."""
    from loyaltylens_core.loop.drift import STATUSES, snapshot_drift
    from loyaltylens_core.kernel.errors import UsageError

    if not 0 < warning < critical:
        raise UsageError(f"--warning {warning:g} and --critical {critical:g} need 0 < warning < critical",
                         "e.g. --warning 0.1 --critical 0.25")
    current_day, reference_day = date_option(as_of, "--as-of"), date_option(reference, "--reference")
    pipeline = pipeline_for(needed=("feature_store", "propensity"))
    report = snapshot_drift(pipeline, current_day, reference_day, warning=warning, critical=critical, bins=bins)
    if as_json:
        print_json(report)
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
    strict: bool = flag("--strict", help="Exit 2 when any row was rejected (good rows are still kept)."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
) -> None:
    """Import outcomes (viewed, clicked, redeemed, dismissed): idempotent on (impression, event).

    Good rows are kept; bad rows and rows naming no recorded impression are listed by
    line in the rejects file."""
    from pathlib import Path

    from loyaltylens_core.loop.outcomes import first_rejects, import_file

    pipeline = pipeline_for(needed=("feedback_store",))
    summary = import_file(pipeline.component("feedback_store"), Path(path), Path(rejects) if rejects else None)
    if as_json:
        print_json(summary.to_dict())
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
    campaign: Optional[str] = typer.Option(
        None, "--campaign", help="Instead: outcomes of this campaign's latest run, with a planted lift for its "
        "treated customers."),
    lift: float = typer.Option(1.5, "--lift", min=1.0, max=5.0, help="With --campaign: the planted lift."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
) -> None:
    """Close the loop on the demo data: hand every demo customer an offer (recording the
    impressions), draw what they did from the demo's ground truth, and import it.

    Adds the demo experiment demo_reminder (control / reminder, 50/50) unless configured;
    its reminder variant has a planted +25% redemption lift for `loyaltylens report` to find."""
    from loyaltylens_core.campaign.demo import campaign_outcomes
    from loyaltylens_core.loop.demo_outcomes import close_the_loop

    if campaign:
        result = campaign_outcomes(pipeline_for(needed=("feature_store", "feedback_store")), campaign, lift)
        if as_json:
            print_json(result)
            return
        typer.echo(f"{result['impressions']:,} impressions of {result['run']}: {result['added']:,} outcomes imported; "
                   f"planted effect {100 * (result['true_difference'] or 0):+.2f} points (lift x{lift:g})\n"
                   f"next: loyaltylens report --campaign {campaign}")
        return
    out = close_the_loop(pipeline_for(), customers)
    if as_json:
        print_json(out)
        return
    typer.echo(f"{out['impressions']:,} impressions, {out['added']:,} outcomes imported from {out['outcomes_file']}\n"
               f"next: loyaltylens report")


@app.command()
def report(
    since: Optional[str] = typer.Option(
        None, "--since", help="Only impressions shown from YYYY-MM-DD or an ISO date-time (UTC unless it says)."),
    source: Optional[str] = typer.Option(None, "--source", help="Only impressions from run, serve, batch or demo."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write an HTML report with plots to this file."),
    drift: bool = flag("--drift", help="Add `monitor`'s drift (latest snapshot vs the one before)."),
    campaign: Optional[str] = typer.Option(
        None, "--campaign", help="Report one campaign: treated vs holdout, per channel and offer, cost."),
    campaign_run: Optional[str] = typer.Option(None, "--run", help="With --campaign: one run only (its run id)."),
    as_json: bool = flag("--json", help="Print the report as JSON."),
) -> None:
    """Redemption per experiment variant (95% CI, lift vs control), propensity calibration
    (by score decile, Brier, AUC on outcomes), and redemption by offer category and tier.
    With --campaign: that campaign's incremental redemption against its holdout."""
    from loyaltylens_core.loop.report import build_report, render_text

    when = since_option(since)
    if campaign_run and not campaign:
        from loyaltylens_core.kernel.errors import UsageError

        raise UsageError("--run needs --campaign", "e.g. report --campaign gold-monthly --run gold-monthly-20261206")
    if campaign:
        _campaign_report(campaign, campaign_run, when, html, as_json)
        return
    pipeline = pipeline_for(needed=("feedback_store", "feature_store", "propensity") if drift else ("feedback_store",))
    table = pipeline.component("feedback_store").impressions_with_outcomes(when)
    if source:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table["source"], source))
    result = build_report(table, pipeline.config.experiments)
    if drift:
        from loyaltylens_core.loop.drift import snapshot_drift

        result["drift"] = snapshot_drift(pipeline)
    from loyaltylens_core.loop.report_html import write_html

    _show(result, html, as_json, write_html, render_text)


def _show(result: dict[str, Any], html: Optional[str], as_json: bool, write: Any, render: Any) -> None:
    """A report as JSON or text, and as an HTML file when asked."""
    from pathlib import Path

    if html:
        write(result, Path(html))
    if as_json:
        print_json(result)
    else:
        typer.echo(render(result))
        if html:
            typer.echo(f"HTML report: {html}")


def _campaign_report(name: str, run: Optional[str], since: Any, html: Optional[str], as_json: bool) -> None:
    from loyaltylens_core.campaign.runner import offer_values
    from loyaltylens_core.loop.campaign_report import build_campaign_report, render_campaign_text
    from loyaltylens_core.loop.report_html import write_campaign_html

    pipeline = pipeline_for(needed=("feedback_store", "retriever"))
    campaign = pipeline.config.campaign(name)
    table = pipeline.component("feedback_store").impressions_with_outcomes(since)
    result = build_campaign_report(table, campaign.name, lambda ids: offer_values(pipeline, ids), run)
    _show(result, html, as_json, write_campaign_html, render_campaign_text)
