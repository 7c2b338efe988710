"""``loyaltylens campaign list|show|run``: campaigns from loyaltylens.toml (or the demo one)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

import typer

from loyaltylens_core.cli.app import app, date_option, pipeline_for, print_json, state, flag

campaign_app = typer.Typer(help="Campaigns: audience, holdout, channel exports, results.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


def _config() -> Any:
    from loyaltylens_core.kernel.config import load_config

    return load_config(state.config, use=state.use)


@campaign_app.command("list")
def campaign_list(
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Say which campaigns run on this day YYYY-MM-DD (`active`; default today, UTC)."),
    as_json: bool = flag("--json", help="Print the campaigns as JSON."),
) -> None:
    """Every configured campaign, whether it runs today, and its last run.

    With no [campaigns] table in loyaltylens.toml, the built-in demo campaign."""
    from loyaltylens_core.campaign.runner import runs_of

    config = _config()
    today = dt.datetime.now(dt.timezone.utc).date()
    day = date_option(as_of, "--as-of") or today
    rows = []
    for name, campaign in sorted(config.all_campaigns().items()):
        runs = runs_of(config.core.data_dir, campaign)
        rows.append({**campaign.describe(), "active_today": campaign.active_on(today),
                     "active": campaign.active_on(day), "last_run": runs[-1] if runs else None})
    if as_json:
        print_json(rows)
        return
    for row in rows:
        last = row["last_run"]
        ran = f"last run {last['run_id']} {last['status']}" if last else "never run"
        active = ("active" if row["active"] else "inactive") + (f" on {day}" if as_of else " today")
        typer.echo(f"{row['name']:24s} {row['audience'] or row['audience_ids'] or 'everyone'}  "
                   f"channels {','.join(row['channels'])}  holdout {row['holdout']:.0%}  {active}  {ran}")


@campaign_app.command("show")
def campaign_show(
    name: str = typer.Argument(..., help="The campaign's name."),
    as_json: bool = flag("--json", help="Print the campaign as JSON."),
) -> None:
    """One campaign as configured, the placement it decides for, and its runs."""
    from loyaltylens_core.campaign.runner import runs_of

    config = _config()
    campaign = config.campaign(name)
    data = {**campaign.describe(),
            "decides_for": config.placement(campaign.placement_key("")).model_dump(mode="json", exclude={"preview"}),
            "runs": runs_of(config.core.data_dir, campaign)}
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if key == "runs":
            typer.echo(f"runs: {len(value)}")
            for r in value:
                typer.echo(f"  {r['run_id']}  {r['status']}  offered {r.get('offered', '-')}  "
                           f"holdout {r.get('holdout', '-')}")
        elif value is not None and value != "":
            typer.echo(f"{key}: {value}")
    if not campaign.holdout:
        typer.echo("note: no holdout, so `report --campaign` cannot measure this campaign's lift", err=True)


@campaign_app.command("run")
def campaign_run(
    name: str = typer.Argument(..., help="The campaign's name."),
    out: Optional[str] = typer.Option(
        None, "--out", help="Folder, s3:// or gs:// prefix for the channel exports (default: the run's folder)."),
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="The campaign day YYYY-MM-DD (default today, UTC): names the run, is checked against "
        "start/end, and picks the latest feature snapshot on or before it."),
    dry_run: bool = flag("--dry-run", help="Audience, offers, caps and cost; nothing counted or written."),
    rerun: bool = flag("--rerun", help="Run the same day again under a new run id."),
    chunk_size: int = typer.Option(10_000, "--chunk-size", min=1, max=1_000_000, help="Customers per batch part."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
) -> None:
    """Run a campaign: audience, holdout, decisions, impressions, one export per channel.

    Caps and frequency rules are counted. Idempotent per campaign and day: a second run
    does nothing; a killed one resumes."""
    from loyaltylens_core.kernel.stages import RUN_STAGES
    from loyaltylens_core.campaign import runner as campaigns

    day = date_option(as_of, "--as-of")
    if dry_run and (out or rerun):
        from loyaltylens_core.kernel.errors import UsageError

        raise UsageError("--dry-run writes nothing, so --out and --rerun mean nothing with it", "drop them")
    pipeline = pipeline_for(needed=(*RUN_STAGES, "batch_engine", "feedback_store"))
    campaign = pipeline.config.campaign(name)  # an unknown campaign fails before the slow prepare
    pipeline.prepare()
    if dry_run:
        _print_dry_run(campaigns.dry_run(pipeline, campaign, day), as_json)
        return
    result = campaigns.run(pipeline, campaign, day=day, out=out, rerun=rerun, chunk_size=chunk_size,
                           config_path=state.config, use=state.use)
    if as_json:
        print_json(result)
        return
    if result.get("already_done"):
        typer.echo(f"{result['run_id']} already done ({result['finished_at'][:19]}): nothing to do; "
                   "pass --rerun for a new run")
        return
    typer.echo(f"{result['run_id']}: {result['offered']:,} offered, {result['holdout']:,} held out, "
               f"{result['not_offered']:,} without an offer ({result['seconds']:.1f} s)")
    for export in result["exports"]:
        typer.echo(f"  {export['channel']:6s} {export['customers']:>8,}  {export['path']}")
    typer.echo(f"next: loyaltylens report --campaign {campaign.name}")


def _print_dry_run(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    typer.echo(f"campaign {data['campaign']} on {data['day']} (dry run: nothing counted or written)")
    typer.echo(f"  audience {data['audience']:,} of {data['considered']:,}: {data['treated']:,} treated, "
               f"{data['holdout']:,} holdout")
    typer.echo(f"  offered {data['offered']:,}, capped {data['capped']:,}, ineligible {data['ineligible']:,}; "
               f"cost {data['cost']:,.2f}")
    typer.echo(f"  {'offer':24s} {'customers':>10s} {'value':>8s} {'cost':>12s}")
    for row in data["per_offer"]:
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        typer.echo(f"  {row['offer_id']:24s} {row['customers']:>10,} {value:>8s} {row['cost']:>12,.2f}")
    typer.echo("  per channel: " + ", ".join(f"{c} {n:,}" for c, n in data["per_channel"].items()))
    if data["dropped"]:
        typer.echo("  dropped offers: " + ", ".join(f"{r} {n:,}" for r, n in data["dropped"].items()))
