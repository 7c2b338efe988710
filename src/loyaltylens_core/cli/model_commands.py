"""Commands over propensity model versions: train, models, promote, rollback."""

from __future__ import annotations

from typing import Any

import typer

from loyaltylens_core.cli.app import app, pipeline_for, print_json


@app.command()
def train(as_json: bool = typer.Option(False, "--json", help="Print the model card as JSON.")) -> None:
    """Train a new version of the propensity model and print its metrics (logged to the
    selected tracking plugin: a local JSON-lines log by default, --use tracking=mlflow)."""
    pipeline = pipeline_for(needed=("feature_store", "propensity", "tracking"))
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
        print_json(card)
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

    pipeline = pipeline_for(needed=("propensity",))
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
        print_json(rows)
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
        print_json(result)
        return
    typer.echo(f"{result['champion']} is the champion (was {result['previous'] or 'none'}; "
               f"{'forced' if result['forced'] else result['comparison']})")


@app.command()
def rollback(as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Return to the previous champion."""
    result = _model_store().rollback()
    if as_json:
        print_json(result)
        return
    typer.echo(f"{result['champion']} is the champion again (was {result['previous']})")
