"""The audit log: one JSON line per served offer, appended to ``<data_dir>/audit/audit.jsonl``
and rotated by size (``audit.jsonl.1`` ... ``.N``).

Several worker processes append to the same file. Each line is written with one
``write`` on a descriptor opened with O_APPEND, under an exclusive ``flock`` that also
covers the size check and the rotation, so lines never interleave and rotation never
loses one. The descriptor stays open between writes (an open per line cost more than the
rest of the write); a process that finds the file rotated under it reopens. A line is on disk (in the page cache) when ``write`` returns: a graceful
shutdown loses nothing, and there is no buffer to flush.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        with self._lock:
            fd, size = self._locked()
            try:
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    fd, size = self._locked()
                os.write(fd, data)
                self.lines += len(records)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _locked(self) -> tuple[int, int]:
        """The current file's descriptor, locked, and the file's size. The descriptor is
        kept between writes; if another process rotated the file meanwhile, it points at
        the rotated one: open the new file instead."""
        while True:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                held = os.fstat(self._fd)
                if held.st_ino == os.stat(self.path).st_ino:
                    return self._fd, held.st_size
            except FileNotFoundError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def open(self) -> None:
        """Open the descriptor now (a service warming up), not on the first served offer."""
        with self._lock:
            fcntl.flock(self._locked()[0], fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ...; the oldest beyond ``backups`` is dropped."""
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{n}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
