"""Commands over propensity model versions: train, models, promote, rollback."""

from __future__ import annotations

from typing import Any

import typer

from loyaltylens_core.cli.app import app, pipeline_for, print_json, flag


@app.command()
def train(as_json: bool = flag("--json", help="Print the model card as JSON.")) -> None:
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
    for row in card.get("segments", []):
        typer.echo(_segment_line(row))
    tracking = card["tracking"]
    if tracking:
        typer.echo(f"tracked in {pipeline.config.stages['tracking']}: "
                   + ", ".join(f"{k} {v}" for k, v in tracking.items() if v is not None))


def _segment_line(row: dict[str, Any]) -> str:
    """One trained segment beside the global model on the same held-out rows."""
    if row.get("model_version") is None:
        return f"  {row['segment']}: scored by the global model ({row['reason']})"
    parts = [f"  {row['segment']}: {row['model_version']} ({row['role']}) on {row['examples']} examples"]
    for key in ("auc", "ece"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.3f} vs global {row.get(f'global_{key}') or 0:.3f}"
                         + (f" (oracle {row[f'oracle_{key}']:.3f})" if row.get(f"oracle_{key}") is not None else ""))
    line = ", ".join(parts)
    if not row.get("beats_global"):
        line += "; does not beat the global model here"
    line += f"; scored by {row['scored_by']}" if row.get("scored_by") != "global" else "; scored by the global model"
    return line


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


SEGMENT_HELP = "A segment's own model, e.g. tier=gold (`loyaltylens models` lists them); default: the global model."


def _model_stores() -> tuple[Any, dict[str, Any]]:
    """The selected propensity plugin's versions (capability VersionedModels) and each
    segment's (capability SegmentedModels; none for a plugin without segments)."""
    from loyaltylens_core.kernel.errors import UsageError

    pipeline = pipeline_for(needed=("propensity",))
    model = pipeline.component("propensity", prepare=False)
    if "VersionedModels" not in pipeline.capabilities("propensity"):
        raise UsageError(f"propensity plugin {pipeline.config.stages['propensity']!r} keeps no model versions here",
                         "manage its versions with its own tooling")
    segments = model.segment_stores() if "SegmentedModels" in pipeline.capabilities("propensity") else {}
    return model.models, segments


def _model_store(segment: str | None) -> Any:
    from loyaltylens_core.kernel.errors import UsageError

    store, segments = _model_stores()
    if segment is None:
        return store
    if segment not in segments:
        raise UsageError(f"no models for segment {segment!r}",
                         f"trained segments: {', '.join(segments) or 'none'} (set segment_by and run `loyaltylens train`)")
    return segments[segment]


@app.command()
def models(as_json: bool = flag("--json", help="Print the versions as JSON.")) -> None:
    """List the propensity model's versions, the global model's and each segment's: role
    (champion / challenger) and held-out metrics."""
    store, segments = _model_stores()
    rows = [{"segment": None, **row} for row in store.listing()]
    for name, segment_store in segments.items():
        rows += [{"segment": name, **row} for row in segment_store.listing()]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no trained versions yet: `loyaltylens train`")
    for row in rows:
        metrics = "  ".join(f"{k.upper()} {row[k]:.4f}" for k in ("auc", "brier", "ece") if row.get(k) is not None)
        typer.echo(f"{row['segment'] or 'global':22s} {row['version']:16s} {row['role']:10s} {metrics}  "
                   f"data {row['training_data_hash']}  {row['created_at']}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="The challenger to make the champion, e.g. propensity_v2."),
    segment: str = typer.Option(None, "--segment", help=SEGMENT_HELP),
    force: bool = flag("--force", help="Promote even if it does not beat the champion."),
    as_json: bool = flag("--json", help="Print the result as JSON."),
) -> None:
    """Make a version the champion if it beats the current one on the same held-out window."""
    result = _model_store(segment).promote(version, force=force)
    if as_json:
        print_json({"segment": segment, **result})
        return
    typer.echo(f"{_scope(segment)}{result['champion']} is the champion (was {result['previous'] or 'none'}; "
               f"{'forced' if result['forced'] else result['comparison']})")


@app.command()
def rollback(
    segment: str = typer.Option(None, "--segment", help=SEGMENT_HELP),
    as_json: bool = flag("--json", help="Print the result as JSON."),
) -> None:
    """Return to the previous champion."""
    result = _model_store(segment).rollback()
    if as_json:
        print_json({"segment": segment, **result})
        return
    typer.echo(f"{_scope(segment)}{result['champion']} is the champion again (was {result['previous']})")


def _scope(segment: str | None) -> str:
    return f"{segment}: " if segment else ""
