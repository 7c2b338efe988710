"""Entry-point discovery with a cache that cannot go stale.

``importlib.metadata.entry_points(group=...)`` opens every installed distribution's
metadata to find the few that name the group: 50-70 ms with ~240 distributions installed,
on every CLI start. What it reads is decided by the ``*.dist-info`` / ``*.egg-info``
directories on ``sys.path`` and their ``entry_points.txt`` files, so the scan's result is
kept in the per-user cache under a fingerprint of exactly those: each ``sys.path`` entry
(with its mtime) and the mtime and size of every metadata directory's ``entry_points.txt``.
Installing, removing, upgrading or editing a plugin changes the fingerprint and the next
start scans again; taking the fingerprint costs ~3 ms. Set ``LOYALTYLENS_NO_DISCOVERY_CACHE=1``
to scan on every start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import sys
from typing import Any

from loyaltylens_core.util.cache import user_cache_dir

_FORMAT = 1
_KEEP = 8  # answers kept, one per distinct sys.path
_METADATA_DIRS = (".dist-info", ".egg-info")


@dataclasses.dataclass(frozen=True)
class FoundEntryPoint:
    """One entry point of the group and the distribution that declares it."""

    name: str
    value: str
    group: str
    dist_name: str | None
    dist_version: str | None

    @property
    def entry_point(self) -> importlib.metadata.EntryPoint:
        return importlib.metadata.EntryPoint(self.name, self.value, self.group)

    @property
    def module(self) -> str:
        return self.entry_point.module

    def load(self) -> object:
        return self.entry_point.load()


def entry_points(group: str) -> list[FoundEntryPoint]:
    """The group's entry points, as ``importlib.metadata`` finds them, from the cache when
    nothing on ``sys.path`` that could change the answer has changed."""
    if os.environ.get("LOYALTYLENS_NO_DISCOVERY_CACHE"):
        return scan(group)
    key = fingerprint(group)
    path = user_cache_dir(f"entry-points-{hashlib.sha256(sys.executable.encode()).hexdigest()[:12]}.json")
    answers = _load(path)
    cached = _rows(answers.get(key))
    if cached is not None:
        return cached
    found = scan(group)
    _write(path, answers, key, found)
    return found


def scan(group: str) -> list[FoundEntryPoint]:
    found = []
    for ep in importlib.metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        found.append(FoundEntryPoint(ep.name, ep.value, group,
                                     dist.metadata["Name"] if dist is not None else None,
                                     dist.version if dist is not None else None))
    return found


def fingerprint(group: str) -> str:
    """A digest of everything on ``sys.path`` that the scan's answer depends on."""
    digest = hashlib.sha256(f"{_FORMAT}\0{group}\0{sys.version}\0".encode())
    for entry in sys.path:
        where = entry or os.getcwd()
        try:
            digest.update(f"{entry}\0{os.stat(where).st_mtime_ns}\0".encode())
        except OSError:
            digest.update(f"{entry}\0-\0".encode())
            continue
        try:
            with os.scandir(where) as children:
                names = sorted(c.name for c in children if c.name.endswith(_METADATA_DIRS))
        except (NotADirectoryError, OSError):
            continue  # a zip on sys.path: its own mtime above covers it
        for name in names:
            try:
                st = os.stat(os.path.join(where, name, "entry_points.txt"))
                digest.update(f"{name}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
            except OSError:
                digest.update(f"{name}\0-\0".encode())
    return digest.hexdigest()


def _rows(rows: Any) -> list[FoundEntryPoint] | None:
    try:
        return None if rows is None else [FoundEntryPoint(**row) for row in rows]
    except TypeError:
        return None  # from another version of this module: scan


def _load(path: os.PathLike[str] | str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: os.PathLike[str] | str, answers: dict[str, Any], key: str, found: list[FoundEntryPoint]) -> None:
    """Atomically, and never an error: a read-only home only costs the next start a scan."""
    # A few answers side by side: the console script and `python -m` see different
    # sys.path[0]s, and must not evict each other's answer on every start.
    data = {k: v for k, v in answers.items() if k != key}
    data = dict(list(data.items())[-(_KEEP - 1):])
    data[key] = [dataclasses.asdict(f) for f in found]
    import tempfile  # only when the answer changed

    directory = os.path.dirname(os.fspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".entry-points-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
