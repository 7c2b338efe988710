"""The Ray engine: the driver resolves features, Ray Data actors score, the driver writes parts.

Data flow that works across machines (a DuckDB file on the driver's disk does not):
1. The driver reads each chunk's point-in-time features (the feature store lives with the
   driver) and writes them as one parquet file per chunk to a staging directory, with the
   chunk and position of every customer. Customers the store does not know become that
   chunk's rejects, as in the local engine.
2. ``ray.data.read_parquet`` reads them; ``map_batches`` runs ``Scorer``, a callable class:
   each Ray actor builds the pipeline once (model, index, generator; read-only, from the data
   dir the driver prepared) and applies ``Pipeline.rows_for``, the same batched stage methods
   as the local engine, so the rows are identical.
3. The driver streams the results back and writes each chunk's part, whole, through the
   core (``job.write_part``) as soon as all of its customers have arrived: a driver killed
   mid-job loses no finished part and a rerun computes only the missing chunks. An actor that
   dies (SIGKILL, OOM) is restarted by Ray and its task retried; rows are keyed by
   (chunk, position) so a retried batch cannot duplicate a customer.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loyaltylens_core.kernel.rows import schema
from loyaltylens_core.sdk.storage import filesystem_for, storage_errors
from loyaltylens_core.kernel.contracts import CustomerFeatures
from loyaltylens_core.kernel.errors import ConfigError, LoyaltyLensError, StageError
from loyaltylens_core.kernel.stages import RUN_STAGES

if TYPE_CHECKING:
    from loyaltylens_core import StageContext
    from loyaltylens_core.kernel.contracts import BatchJob

    from loyaltylens_batch_ray import RayBatchSettings

MARKER = "loyaltylens-block-failed: "
FEATURES = tuple(CustomerFeatures.model_fields)
RUN_AFTER_FEATURES = tuple(s for s in RUN_STAGES if s != "feature_store")


class Scorer:
    """One per Ray actor: the pipeline built once, then batches of features into rows."""

    def __init__(self, config_path: str | None, use: list[str], placement: str | None = None) -> None:
        from loyaltylens_core.kernel.pipeline import Pipeline

        self.pipeline = Pipeline.from_config(config_path, use=use, read_only=True)
        self.placement = placement
        self.pipeline.prepare(RUN_AFTER_FEATURES)
        self.plugins = ", ".join(f"{s}={self.pipeline.config.stages[s]}" for s in RUN_AFTER_FEATURES)

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = batch.select(list(FEATURES)).to_pylist()
        features = [CustomerFeatures.model_validate(record) for record in records]
        try:
            rows = self.pipeline.rows_for(features, placement=self.placement)
        except Exception as exc:  # noqa: BLE001 - becomes one line on the driver
            ids = [f.customer_id for f in features]
            what = exc.message if isinstance(exc, LoyaltyLensError) else f"{type(exc).__name__}: {exc}"
            raise RuntimeError(
                f"{MARKER}{len(ids)} customers {ids[0]}..{ids[-1]} (chunk {batch.column('_chunk')[0].as_py()}, "
                f"plugins {self.plugins}): {what}"
            ) from None
        table = pa.Table.from_pylist(rows, schema=schema())
        return table.append_column("_chunk", batch.column("_chunk")).append_column("_pos", batch.column("_pos"))


def pieces(files: list[tuple[str, int]], at_least: int) -> list[dict[str, Any]]:
    """(path, start, rows) slices of the staged (path, rows) files: at least ``at_least``
    of them when there are that many rows, none crossing a file."""
    total = sum(count for _, count in files)
    size = max(1, -(-total // max(at_least, len(files))))
    return [{"path": path, "start": start, "rows": min(size, count - start)}
            for path, count in files for start in range(0, count, size)]


def read_piece(batch: pa.Table, filesystem: Any) -> pa.Table:
    """One piece of a staged chunk file (runs as a Ray task, near the data or not)."""
    path, start, rows = (batch.column(name)[0].as_py() for name in ("path", "start", "rows"))
    return pq.read_table(path, filesystem=filesystem).slice(start, rows)


def _quiet_console(name: str) -> None:
    """Keep Ray Data's INFO lines and internal tracebacks off the terminal: the job reports
    its own progress and fails with one line. The full log stays in Ray's session directory
    (``/tmp/ray/session_latest/logs/ray-data``)."""
    for handler in logging.getLogger(name).handlers:
        if not type(handler).__name__.endswith("FileHandler"):  # Ray's SessionFileHandler is a plain Handler
            handler.setLevel(logging.CRITICAL)


def _in_order(tables: list[pa.Table]) -> pa.Table:
    """A chunk's result tables as one, in customer order, each position once (a batch
    retried after its actor died must not duplicate a customer)."""
    table = pa.concat_tables(tables)
    positions = table.column("_pos").to_numpy()
    _, first = np.unique(positions, return_index=True)  # sorted by position, first arrival of each
    return table.take(pa.array(first)).drop_columns(["_chunk", "_pos"])


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens there: ray.init retries an
    unreachable cluster for minutes. ("auto" is resolved by Ray itself.)"""
    import socket
    from urllib.parse import urlparse

    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto",
                          "set [batch_engine.ray] address")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s).close()
    except OSError as exc:
        raise StageError(f"cannot connect to Ray at {address}: {exc.strerror or type(exc).__name__}",
                         "start it (`ray start --head`) or set [batch_engine.ray] address") from None


class RayBatchEngine:
    def __init__(self, settings: RayBatchSettings, context: StageContext) -> None:
        self.settings = settings
        self.context = context
        self.workers = settings.num_workers
        self._started_ray = False

    # --- driver ------------------------------------------------------------------

    def run(self, job: BatchJob) -> None:
        if not job.chunks:
            return
        root = self.settings.staging_dir.rstrip("/") or str(job.parts)
        where = f"{root}/{job.parts.name}-staging"
        filesystem, staging = filesystem_for(where)
        with storage_errors(where):
            filesystem.create_dir(staging, recursive=True)
        try:
            with storage_errors(where):
                expected, rejects, files = self._stage(job, filesystem, staging)
            if files:
                self._compute(job, filesystem, files, expected, rejects)
        finally:
            try:
                filesystem.delete_dir(staging)
            except OSError:
                pass  # already gone, or the store refuses: the next run overwrites it

    def _stage(self, job: BatchJob, filesystem: Any, staging: str
               ) -> tuple[dict[int, int], dict[int, Any], list[tuple[str, int]]]:
        """Each chunk's features to ``<staging>/chunk-NNNNNN.parquet`` (rejects kept aside),
        on local disk or in object storage (``staging_dir = "s3://bucket/prefix"``)."""
        expected: dict[int, int] = {}
        rejects: dict[int, Any] = {}
        files: list[tuple[str, int]] = []
        for index, chunk in job.chunks:
            features, unknown = job.pipeline.read_known(chunk, job.as_of)
            rejects[index] = unknown
            if unknown:
                job.advance(len(unknown))
            if not features:
                job.write_part(index, [], unknown)
                continue
            expected[index] = len(features)
            table = pa.Table.from_pylist([f.model_dump(mode="json") for f in features])
            table = table.append_column("_chunk", pa.array([index] * len(features), pa.int64()))
            table = table.append_column("_pos", pa.array(range(len(features)), pa.int64()))
            path = f"{staging}/chunk-{index:06d}.parquet"
            pq.write_table(table, path, filesystem=filesystem)  # whole or absent: one PUT, or a local write
            files.append((path, len(features)))
        return expected, rejects, files

    def _compute(self, job: BatchJob, filesystem: Any, files: list[tuple[str, int]], expected: dict[int, int],
                 rejects: dict[int, Any]) -> None:
        import ray.data
        from ray.data import ActorPoolStrategy

        self._connect()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        _quiet_console("ray.data")
        # Work starts once every Scorer actor is up: otherwise the first actor to finish
        # building its pipeline takes every block of a small job, and a cluster without room
        # for all of them fails within stall_timeout_s instead of running on fewer.
        context.wait_for_min_actors_s = self._actor_start_s()
        # The staged files are read by tasks we declare (not read_parquet, whose file
        # listing task asks for a whole CPU: on a cluster whose nodes the actors have left
        # with half a CPU each it would never be scheduled). Each file is cut into pieces so
        # that every actor gets work even when there is one chunk.
        dataset = ray.data.from_items(pieces(files, 2 * self.workers)).map_batches(
            read_piece,
            fn_kwargs={"filesystem": filesystem},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=self.settings.cpus_per_read,
        ).map_batches(
            Scorer,
            fn_constructor_kwargs={"config_path": job.config_path, "use": list(job.use), "placement": job.placement},
            batch_size=self.settings.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=self.workers),
            num_cpus=self.settings.cpus_per_worker,
            # Ray Data's defaults for actors are the ones we want: SPREAD (one per node first,
            # so every machine scores), one killed mid-job comes back (max_restarts=-1) and its
            # batch is retried (max_task_retries=-1); tests check the first and the last.
        )
        # Results stay Arrow on the driver (no row-by-row Python): each chunk's tables are
        # gathered until its customers are all in, then ordered by position and written.
        arrived: dict[int, list[pa.Table]] = {}
        counts: dict[int, set[int]] = {}
        for table in self._stream(dataset):
            job.advance(table.num_rows)
            chunk_column = table.column("_chunk").to_numpy()
            for chunk in np.unique(chunk_column).tolist():
                part = table.filter(pa.array(chunk_column == chunk))
                arrived.setdefault(chunk, []).append(part)
                counts.setdefault(chunk, set()).update(part.column("_pos").to_pylist())
                if chunk in expected and len(counts[chunk]) == expected[chunk]:
                    job.write_part(chunk, _in_order(arrived.pop(chunk)), rejects[chunk])
                    del counts[chunk], expected[chunk]
        if expected:
            raise StageError(
                f"Ray finished without results for {len(expected)} chunks (first: {min(expected)})",
                "rerun the same command: finished chunks are kept",
            )

    def _stream(self, dataset: Any) -> Iterator[pa.Table]:
        """The dataset's result batches, failing (naming the stage) when none arrives within
        ``stall_timeout_s``: a Ray job must never hang silently. The first batch may also wait
        for the actors to start (which has its own limit, reported as such)."""
        results: queue.Queue[Any] = queue.Queue(maxsize=8)
        done = object()

        def pump() -> None:
            try:
                for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                    results.put(table)
                results.put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the driver thread
                results.put(exc)

        threading.Thread(target=pump, name="loyaltylens-ray-results", daemon=True).start()
        wait = self._actor_start_s() + self.settings.stall_timeout_s
        while True:
            try:
                item = results.get(timeout=wait)
                wait = self.settings.stall_timeout_s
            except queue.Empty:
                raise StageError(
                    f"Ray made no progress for {self.settings.stall_timeout_s:g} s in stage 'score' "
                    f"({self.workers} Scorer actors x {self.settings.cpus_per_worker:g} CPU, reading parquet)",
                    "check `ray status` for free CPUs and memory, or raise [batch_engine.ray] stall_timeout_s",
                ) from None
            if item is done:
                return
            if isinstance(item, BaseException):
                raise self._explain(item) from None
            yield item

    def _actor_start_s(self) -> int:
        """How long the actors may take to start (each loads every plugin and the model)."""
        return max(1, math.ceil(self.settings.stall_timeout_s))

    def _explain(self, exc: BaseException) -> LoyaltyLensError:
        """A worker's failure as one line naming the customers and the plugins, not a Ray dump."""
        text = str(exc)
        if "while starting actors" in text:
            return StageError(
                f"Ray could not start {self.workers} Scorer actors x {self.settings.cpus_per_worker:g} CPU "
                f"within {self.settings.stall_timeout_s:g} s",
                "check `ray status` for free CPUs and memory, or lower [batch_engine.ray] num_workers",
            )
        if MARKER in text:
            line = text[text.rindex(MARKER) + len(MARKER):].splitlines()[0]
            return StageError(f"Ray batch failed for {line}", "fix the plugin, then rerun: finished chunks are kept")
        first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
        return StageError(f"Ray batch failed: {type(exc).__name__}: {first}",
                          "rerun the same command to compute only the missing chunks")

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        # Workers rebuild the pipeline from the same configuration: pass on the settings
        # (and where plugins are importable from) through Ray's runtime environment.
        env = {k: v for k, v in os.environ.items() if k.startswith("LOYALTYLENS_") or k == "PYTHONPATH"}
        options: dict[str, Any] = {
            "include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": env},
        }
        address = self.settings.address.strip()
        if address:
            _reachable(address)
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError) as exc:
                raise StageError(f"cannot connect to Ray at {address}: {str(exc).splitlines()[0][:200]}",
                                 "start it (`ray start --head`) or set [batch_engine.ray] address") from None
        else:
            cpus = os.cpu_count() or 1
            reserved = self.workers * self.settings.cpus_per_worker
            if reserved + self.settings.cpus_per_read > cpus:
                raise ConfigError(
                    f"{self.workers} Ray workers x {self.settings.cpus_per_worker:g} CPU leave no CPU for Ray Data's "
                    f"read tasks on this {cpus}-CPU machine (the job would wait forever)",
                    "lower [batch_engine.ray] num_workers or cpus_per_worker",
                )
            # address="local": a new Ray for this job even when `ray start` left a cluster
            # running on this machine (plain ray.init() would join it and refuse num_cpus).
            ray.init(address="local", num_cpus=cpus, object_store_memory=self.settings.object_store_memory_mb * 2**20, **options)
        self._started_ray = True

    def close(self) -> None:
        """Stop the Ray this engine started (its internal actors hold ~1 GB after a job)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
