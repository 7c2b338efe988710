"""Commands that hand out offers and set them up: run, batch, serve, index, seed, plugins, config."""

from __future__ import annotations

from typing import Any, Optional

import typer

from loyaltylens_core.cli.app import app, config_app, plugin_app, state, pipeline_for, print_json, demo_data_of, flag


@app.command()
def run(
    customer_id: str = typer.Argument(..., help="Loyalty customer id, e.g. C001."),
    as_json: bool = flag("--json", help="Print the PipelineResult as JSON."),
    placement: Optional[str] = typer.Option(
        None, "--placement", help="The placement to decide for (a \\[placements.NAME] table; default: the `placement` setting)."
    ),
) -> None:
    """Score one customer, decide which offers they may get and write the copy for the best."""
    from loyaltylens_core.kernel.contracts import validate_customer_id

    validate_customer_id(customer_id)
    pipeline = pipeline_for()
    pipeline.config.placement(placement)  # an unknown placement fails before anything is built
    pipeline.prepare()
    result = pipeline.run(customer_id, placement=placement)
    if as_json:
        print_json(result.to_json_dict())
        return
    from loyaltylens_core.cli.render import result_panel

    from rich.console import Console

    Console().print(result_panel(result))


@app.command()
def plugins(
    as_json: bool = flag(
        "--json", help="Print as JSON, with the capabilities each active plugin's component declares."
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
        print_json(rows)
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
    as_json: bool = flag("--json", help="Print what was written as JSON."),
) -> None:
    """Write a ready plugin package: pyproject with the entry point, settings, a component
    that satisfies the stage Protocol, a passing test and a README."""
    from pathlib import Path

    from loyaltylens_core.cli.scaffold import new_plugin

    target, files = new_plugin(name, stage, Path(directory))
    if as_json:
        print_json({"directory": str(target), "stage": stage, "name": name, "files": [str(f) for f in files]})
        return
    typer.echo(f"wrote {stage} plugin {name!r} to {target} ({len(files)} files)\n"
               f"next: pip install -e '{target}[test]' && pytest {target}")


@config_app.command("show")
def config_show(as_json: bool = flag("--json", help="Print as JSON.")) -> None:
    """Print the resolved configuration, where each value came from, secrets masked."""
    from loyaltylens_core.kernel.config import load_config
    from loyaltylens_core.kernel.registry import load_registry

    config = load_config(state.config, use=state.use)
    registry = load_registry()
    config.validate_against(registry, needed=())
    described = config.describe(registry)
    if as_json:
        print_json(described)
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
    pipeline = pipeline_for(needed=("feature_store",))
    demo = demo_data_of(pipeline, customers=customers, rebuild=True)
    store = pipeline.component("feature_store")
    rows = store.materialize(rebuild=True) if "Materializable" in pipeline.capabilities("feature_store") else None
    typer.echo(f"demo data: {demo.customers} customers in {demo.directory}"
               + (f"; feature store: {rows} rows" if rows is not None else ""))


@app.command()
def index(
    rebuild: bool = flag("--rebuild", help="Re-embed everything, not only what changed."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
) -> None:
    """Index the offer catalogue in the selected retriever: what changed, or everything with --rebuild."""
    pipeline = pipeline_for(needed=("retriever",))
    retriever = pipeline.component("retriever", prepare=False)
    if "Indexable" not in pipeline.capabilities("retriever"):
        from loyaltylens_core.kernel.errors import UsageError

        raise UsageError(
            f"retriever plugin {pipeline.config.stages['retriever']!r} has no index step",
            "it indexes on its own",
        )
    count = retriever.index(rebuild=rebuild)
    details = dict(retriever.last_index) if "ExplainsIndex" in pipeline.capabilities("retriever") else {}
    if as_json:
        print_json({"retriever": pipeline.config.stages["retriever"], "offers": count, **details})
        return
    changed = f" ({details['embedded']} embedded, {details['kept']} unchanged)" if "embedded" in details else ""
    typer.echo(f"indexed {count} offers with retriever {pipeline.config.stages['retriever']!r}{changed}")


@app.command()
def batch(
    out: str = typer.Option(..., "--out", "-o", help="Results file (.parquet)."),
    all_customers: bool = flag("--all", help="Every customer in the feature store."),
    ids: Optional[str] = typer.Option(None, "--ids", help="File with one customer id per line."),
    chunk_size: int = typer.Option(10_000, min=1, max=1_000_000, help="Customers per written chunk."),
    overwrite: bool = flag("--overwrite", help="Replace an existing result or unfinished batch."),
    strict: bool = flag("--strict", help="Exit 2 when any customer was not found (still writes the rest)."),
    as_json: bool = flag("--json", help="Print the summary as JSON."),
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

    pipeline = pipeline_for(needed=(*RUN_STAGES, "batch_engine"))
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
        print_json(data)
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
