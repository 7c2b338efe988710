"""Recording impressions: the app layer's listener on the pipeline's events.

The CLI, the service and the pytest fixtures open their pipelines through
``open_pipeline``, which attaches an ``ImpressionRecorder`` (a pluggy plugin on
``loyaltylens_after_run`` and ``loyaltylens_after_batch``) writing into the
``feedback_store`` stage, so another store replaces the embedded one by config and any
other plugin can listen to the same events. The kernel's pipeline knows nothing of it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loyaltylens_core.kernel.feedback import IMPRESSION_COLUMNS, ROWS_PATH_MAX, impression_tuple, table_from_tuples
from loyaltylens_core.kernel.hookspecs import hookimpl
from loyaltylens_core.kernel.pipeline import Pipeline
from loyaltylens_core.kernel.stages import RUN_STAGES
from loyaltylens_core.util.progress import QUIET, Progress

if TYPE_CHECKING:
    import pyarrow as pa

    from loyaltylens_core.kernel.contracts import PipelineResult


def open_pipeline(
    config_path: str | None = None,
    *,
    use: Sequence[str] | None = None,
    extra_plugins: Sequence[object] = (),
    entry_points: bool = True,
    progress: Progress = QUIET,
    needed: tuple[str, ...] = RUN_STAGES,
    read_only: bool = False,
    source: str = "run",
) -> Pipeline:
    """``Pipeline.from_config`` plus, unless ``record_impressions = false``, the recorder:
    what every app (CLI, service, test fixture) hands out offers through."""
    from loyaltylens_core.kernel.config import load_config
    from loyaltylens_core.kernel.registry import load_registry

    config = load_config(config_path, use=list(use) if use else None)
    registry = load_registry(extra_plugins, entry_points=entry_points)
    record = config.core.record_impressions
    pipeline = Pipeline.open(
        config, registry, progress=progress, needed=(*needed, "feedback_store") if record else needed,
        read_only=read_only,
    )
    if record:
        pipeline.attach(ImpressionRecorder(lambda: pipeline.component("feedback_store"), source=source))
    return pipeline


def recorder_of(pipeline: Pipeline) -> "ImpressionRecorder | None":
    """The recorder ``open_pipeline`` attached, or None (``record_impressions = false``)."""
    return next((x for x in pipeline.listeners if isinstance(x, ImpressionRecorder)), None)


class ImpressionRecorder:
    """The core's listener that writes impressions into the feedback store.

    Single runs are buffered and written by a background thread every ``flush_s`` seconds
    (or at ``flush_rows``) and when the pipeline closes, so neither a request nor a `run`
    waits on a file write and a service writes a few files a second, not one per request;
    a process killed without closing loses at most ``flush_s`` of impressions. A batch's
    impressions are written at once. A failure to record is reported on stderr and never
    fails the run that made the impression. ``enabled = False`` pauses recording (the
    service's warm-up runs are not impressions)."""

    def __init__(self, store: Callable[[], Any], source: str = "run",
                 flush_rows: int = 5000, flush_s: float = 1.0) -> None:
        import threading

        self._store = store
        self.source = source
        self.enabled = True
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._pending: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @hookimpl
    def loyaltylens_after_run(self, result: "PipelineResult") -> None:
        if not self.enabled or result.top_offer is None:
            return
        row = impression_tuple(result, self.source)
        with self._lock:
            self._pending.append(row)
            many = len(self._pending) >= self.flush_rows
            if self._thread is None:
                import threading

                self._thread = threading.Thread(target=self._flush_loop, name="loyaltylens-impressions", daemon=True)
                self._thread.start()
        if many:
            self._wake.set()

    @hookimpl
    def loyaltylens_after_batch(self, impressions: Any) -> None:
        if self.enabled:
            self._store().record_impressions(impressions)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """The pipeline closes its listeners first: what is buffered is written."""
        self.flush()

    def flush(self) -> None:
        """Write what is buffered now."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            from loyaltylens_core.kernel.contracts import RecordsImpressionRows

            store = self._store()
            # A few rows before pandas is loaded (a CLI `run`): rows, written without Arrow.
            # Otherwise (a service's flush, thousands of rows) Arrow is much faster.
            if len(pending) <= ROWS_PATH_MAX and "pandas" not in sys.modules and isinstance(store, RecordsImpressionRows):
                names = [name for name, _ in IMPRESSION_COLUMNS]
                store.record_impression_rows([dict(zip(names, row)) for row in pending])
            else:
                store.record_impressions(table_from_tuples(pending))
        except Exception as exc:  # noqa: BLE001 - recording must not fail the runs it records
            print(f"warning: {len(pending)} impression(s) not recorded: {type(exc).__name__}: {exc}", file=sys.stderr)
