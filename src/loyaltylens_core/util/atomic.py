"""Files that exist whole or not at all: written beside their name, flushed to disk, then
renamed into place. A reader, or a process resuming after ``kill -9``, never sees half a file.

One place for the pattern batch parts, feedback segments, rejects files and reports share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def write_with(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; it is then synced and renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    write_with(path, lambda tmp: pq.write_table(table, tmp))
