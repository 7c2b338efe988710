"""`loyaltylens deploy`: package the propensity model and ship it to an endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from loyaltylens_core.cli.app import deploy_app, state, pipeline_for, emit

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline


TARGET_OPTION = typer.Option(None, "--target", "-t", help="Deploy target plugin (default: deploy_target stage).")


def _deploy_pipeline(target: Optional[str], needed: tuple[str, ...]) -> "Pipeline":
    if target:
        state.use = [*state.use, f"deploy_target={target}"]
    return pipeline_for(needed=needed)


def _default_archive(pipeline: "Pipeline") -> Any:
    return pipeline.config.core.data_dir / "deploy" / "model.tar.gz"


@deploy_app.command("package")
def deploy_package(
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Archive path (default <data_dir>/deploy/model.tar.gz)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the trained propensity model (TorchScript + code/inference.py) into model.tar.gz."""
    from pathlib import Path

    from loyaltylens_core.sdk.archive import build_archive

    pipeline = pipeline_for(needed=("propensity",))
    path = Path(out) if out else _default_archive(pipeline)
    spec = build_archive(pipeline.component("propensity"), path)
    emit({"archive": str(path), "model_version": spec.get("model_version"), "bytes": path.stat().st_size}, as_json)


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
    emit(pipeline.component("deploy_target").up(path), as_json)


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
    emit(reply, as_json)


@deploy_app.command("status")
def deploy_status(target: Optional[str] = TARGET_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the endpoint's state."""
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    emit(pipeline.component("deploy_target").status(), as_json)


@deploy_app.command("down")
def deploy_down(target: Optional[str] = TARGET_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """Tear the endpoint down (and everything `up` created for it)."""
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    emit(pipeline.component("deploy_target").down(), as_json)
