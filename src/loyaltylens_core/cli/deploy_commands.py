"""`loyaltylens deploy`: package the propensity model and ship it to an endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from loyaltylens_core.cli.app import deploy_app, state, pipeline_for, emit, flag

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline


TARGET_OPTION = typer.Option(None, "--target", "-t", help="Deploy target plugin (default: deploy_target stage).")


def _deploy_pipeline(target: Optional[str], needed: tuple[str, ...]) -> "Pipeline":
    if target:
        state.use = [*state.use, f"deploy_target={target}"]
    return pipeline_for(needed=needed)


def _default_archive(pipeline: "Pipeline") -> Any:
    return pipeline.config.core.data_dir / "deploy" / "model.tar.gz"


def _default_package(pipeline: "Pipeline") -> Any:
    return pipeline.config.core.data_dir / "deploy" / "multi-model"


JSON_OPTION = flag("--json", help="Print the result as JSON.")

MULTI_MODEL_OPTION = flag(
    "--multi-model",
    help="One archive per segment model plus the global one, in one directory (a multi-model endpoint's prefix).")


VARIANTS_OPTION = typer.Option(
    None, "--variants",
    help="Split traffic between model versions, e.g. champion=90,challenger=10 (or propensity_v1=50,propensity_v3=50).")


def _default_path(pipeline: "Pipeline", multi_model: bool, variants: Optional[str]) -> Any:
    if variants:
        return pipeline.config.core.data_dir / "deploy" / "variants"
    return _default_package(pipeline) if multi_model else _default_archive(pipeline)


def _package(pipeline: "Pipeline", path: Any, multi_model: bool, variants: Optional[str] = None) -> dict[str, Any]:
    from loyaltylens_core.kernel.errors import UsageError
    from loyaltylens_core.sdk.archive import build_archive, build_multi_model

    model = pipeline.component("propensity")
    if variants:
        from loyaltylens_core.sdk.variants import build_variant_package, parse_weights

        if multi_model:
            raise UsageError("--variants and --multi-model do not combine yet", "choose one")
        manifest = build_variant_package(model, parse_weights(variants), path)
        return {"package": str(path), "variants": manifest["variants"]}
    if multi_model:
        manifest = build_multi_model(model, path)
        return {"package": str(path), "models": manifest["models"]}
    spec = build_archive(model, path)
    return {"archive": str(path), "model_version": spec.get("model_version"), "bytes": path.stat().st_size}


@deploy_app.command("package")
def deploy_package(
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Archive path (default <data_dir>/deploy/model.tar.gz; "
                                                                "with --multi-model a directory, <data_dir>/deploy/multi-model)."),
    multi_model: bool = MULTI_MODEL_OPTION,
    variants: Optional[str] = VARIANTS_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Export the trained propensity model (TorchScript + code/inference.py) into model.tar.gz."""
    from pathlib import Path

    pipeline = pipeline_for(needed=("propensity",))
    path = Path(out) if out else _default_path(pipeline, multi_model, variants)
    emit(_package(pipeline, path, multi_model, variants), as_json)


@deploy_app.command("up")
def deploy_up(
    target: Optional[str] = TARGET_OPTION,
    archive: Optional[str] = typer.Option(None, "--archive", help="Use this archive (or multi-model package "
                                                                  "directory) instead of packaging now."),
    multi_model: bool = MULTI_MODEL_OPTION,
    variants: Optional[str] = VARIANTS_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create (or update) the endpoint from the archive and wait until it serves."""
    from pathlib import Path

    if archive:
        pipeline = _deploy_pipeline(target, ("deploy_target",))
        path = Path(archive)
    else:
        pipeline = _deploy_pipeline(target, ("propensity", "deploy_target"))
        path = _default_path(pipeline, multi_model, variants)
        _package(pipeline, path, multi_model, variants)
    emit(pipeline.component("deploy_target").up(path), as_json)


@deploy_app.command("weights")
def deploy_weights(
    weights: str = typer.Argument(..., help="New weights by variant, e.g. champion=50,challenger=50."),
    target: Optional[str] = TARGET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Change the traffic split of a running endpoint's variants, without replacing it."""
    from loyaltylens_core.kernel.errors import UsageError
    from loyaltylens_core.sdk.variants import parse_weights

    parsed = parse_weights(weights, at_least=1)
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    deploy_target = pipeline.component("deploy_target")
    if "SplitsTraffic" not in pipeline.capabilities("deploy_target"):
        raise UsageError(f"deploy target {pipeline.config.stages['deploy_target']!r} has no production variants",
                         "use --target local, --target sagemaker or --target vertex")
    emit(deploy_target.update_weights(parsed), as_json)


@deploy_app.command("invoke")
def deploy_invoke(
    customer_id: str = typer.Argument(..., help="Customer whose features are sent to the endpoint."),
    target: Optional[str] = TARGET_OPTION,
    target_model: Optional[str] = typer.Option(
        None, "--target-model", help="Multi-model endpoint: the archive to score with (default: the customer's "
                                     "segment's, else global.tar.gz)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Score one customer's current features on the deployed endpoint."""
    from loyaltylens_core.kernel.contracts import validate_customer_id
    from loyaltylens_core.kernel.errors import UsageError

    validate_customer_id(customer_id)
    pipeline = _deploy_pipeline(target, ("feature_store", "deploy_target"))
    deploy_target = pipeline.component("deploy_target")
    features = pipeline.component("feature_store").read_latest(customer_id)
    if target_model is None:
        reply = dict(deploy_target.invoke(features))
    elif "ServesManyModels" in pipeline.capabilities("deploy_target"):
        reply = dict(deploy_target.invoke_model(features, target_model))
    else:
        raise UsageError(f"deploy target {pipeline.config.stages['deploy_target']!r} has no multi-model endpoints",
                         "leave out --target-model, or use --target local")
    reply["customer_id"] = customer_id
    emit(reply, as_json)


@deploy_app.command("status")
def deploy_status(target: Optional[str] = TARGET_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Show the endpoint's state."""
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    emit(pipeline.component("deploy_target").status(), as_json)


@deploy_app.command("down")
def deploy_down(target: Optional[str] = TARGET_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Tear the endpoint down (and everything `up` created for it)."""
    pipeline = _deploy_pipeline(target, ("deploy_target",))
    emit(pipeline.component("deploy_target").down(), as_json)
