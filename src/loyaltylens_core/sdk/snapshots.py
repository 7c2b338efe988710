"""Every snapshot of an offline feature store, for plugins that write them elsewhere
(`loyaltylens features export --to delta|feast`): the ``ExportsSnapshots`` protocol names
one snapshot at a time, so the whole history is walked back from the latest."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Iterator

from loyaltylens_core.kernel.contracts import CustomerFeatures, SnapshotInfo
from loyaltylens_core.kernel.errors import ConfigError, StageError

EXPORT_NEEDS = ("snapshot_info", "snapshot_batches", "training_examples")


def all_snapshots(source: Any) -> list[SnapshotInfo]:
    """Every snapshot of ``source``, oldest first: the latest, then the latest before it..."""
    if not all(hasattr(source, name) for name in EXPORT_NEEDS):
        raise ConfigError(f"feature store {type(source).__name__} cannot hand out its snapshots and labels",
                          "export from one that can (the default: --from duckdb)")
    found: list[SnapshotInfo] = []
    before: dt.date | None = None
    while True:
        try:
            info = SnapshotInfo.model_validate(source.snapshot_info(before))
        except StageError:
            break  # no snapshot on or before `before`: all found
        found.append(info)
        before = info.as_of - dt.timedelta(days=1)
    if not found:
        raise StageError("the source feature store has no snapshot", "run `loyaltylens seed` first")
    return found[::-1]


def export_fingerprint(snapshots: list[SnapshotInfo], horizon_days: int) -> str:
    """Changes whenever an export of these snapshots and labels could differ."""
    parts = [info.fingerprint for info in snapshots] + [str(horizon_days)]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def snapshot_rows(source: Any, snapshots: list[SnapshotInfo]) -> Iterator[list[dict[str, Any]]]:
    """The rows of every snapshot as plain dicts (``CustomerFeatures`` fields), a batch at a time."""
    for info in snapshots:
        for batch in source.snapshot_batches(info.as_of):
            yield [CustomerFeatures.model_validate(row).model_dump() for row in batch]
