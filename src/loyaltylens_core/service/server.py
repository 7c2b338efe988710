"""Start the service: prepare the data dir once, then hand the app to uvicorn.

A DuckDB file takes one writer. So the parent process does what ``run`` does on a fresh
install (demo data, training, index) with the stores open for writing, closes them, and
only then starts the workers, which open them read-only and never seed, train or index.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.util.progress import Progress
from loyaltylens_core.service.keys import load_keys
from loyaltylens_core.service.settings import OPTIONS_ENV, ServeOptions, ServeSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def resolve_settings(table: dict[str, Any], overrides: dict[str, Any]) -> ServeSettings:
    """``[serve]`` from the config file, then the command-line flags that were given."""
    from pydantic import ValidationError

    merged = {**table, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return ServeSettings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(table)"
        raise ConfigError(f"[serve] setting {field!r} is invalid: {err['msg']}", "fix loyaltylens.toml or the flag") from None


def prepare_data_dir(options: ServeOptions, progress: Progress) -> None:
    """Build whatever the selected stages need (data, model, index), then let go of it."""
    from loyaltylens_core.kernel.pipeline import Pipeline

    with Pipeline.from_config(options.config, use=options.use, progress=progress) as pipeline:
        pipeline.prepare()


def serve(options: ServeOptions, settings: ServeSettings, *, quiet: bool = False) -> None:
    """Nothing here may import prometheus_client (``.app`` does) before
    PROMETHEUS_MULTIPROC_DIR is set: the client picks its storage when first imported."""
    from loyaltylens_core.kernel.config import load_config

    keys = load_keys(os.environ, settings.api_keys_file)  # a bad keys file fails before any work
    if settings.host not in LOOPBACK and not keys:
        print(
            f"warning: serving on {settings.host} (all interfaces or a public address) with no API keys: "
            "anyone who can reach the port gets offers. Set LOYALTYLENS_API_KEYS or [serve] api_keys_file.",
            file=sys.stderr,
        )
    prepare_data_dir(options, Progress(quiet=quiet))
    data_dir = load_config(options.config, use=options.use).core.data_dir
    metrics_dir = fresh_metrics_dir(data_dir / "serve-metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[OPTIONS_ENV] = options.to_env()
    if not quiet:
        print(
            f"serving on http://{settings.host}:{settings.port} with {settings.workers} worker(s); "
            f"API docs at /docs, readiness at /readyz",
            file=sys.stderr,
        )
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal
    # under the handler it found: make that a clean exit 0 (systemd, Kubernetes and
    # the tests read a non-zero status as a crash).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        _run_uvicorn(settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def fresh_metrics_dir(root: Path) -> Path:
    """An empty directory for this service's metric files (counters start at zero with
    the service); directories left by services that are gone are removed."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_uvicorn(settings: ServeSettings) -> None:
    import uvicorn

    uvicorn.run(
        "loyaltylens_core.service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="auto",
        http="loyaltylens_core.service.protocol:ServeHeaderTimeoutProtocol",
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        timeout_graceful_shutdown=int(max(1, settings.graceful_timeout_s)),
        limit_concurrency=settings.limit_concurrency,
        h11_max_incomplete_event_size=16 * 1024,
        access_log=False,
        server_header=False,
        log_level="warning",
    )
