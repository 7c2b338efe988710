"""The index as memory-mapped files beside the DuckDB file: a process maps it in milliseconds.

DuckDB stays the store of record (offers, vectors, content hashes, the incremental index).
After each index the retriever also writes what a search needs as plain ``.npy`` files in a
directory named by the index's fingerprint, then points ``current.json`` at it. A process
opens those with ``np.load(mmap_mode="r")``: nothing is copied or parsed up front, and
service workers on one machine share the same page-cache pages. Offers are parsed from
their JSON line only when a search returns them.

``current.json`` also records the catalogue file's size and modification time: when they
are unchanged a process trusts the stored fingerprint instead of re-reading and validating
a 50,000-offer catalogue at every start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from loyaltylens_core.kernel.contracts import Offer

FORMAT = "1"


class LazyOffers(Sequence[Offer]):
    """Offers by row, parsed from JSON on first access (a search touches a handful)."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self._parsed: dict[int, Offer] = {}

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        row = int(row)
        offer = self._parsed.get(row)
        if offer is None:
            offer = self._parsed[row] = Offer.model_validate_json(self._lines[row])
        return offer

    def __iter__(self) -> Iterator[Offer]:
        return (self[i] for i in range(len(self)))


def source_stamp(path: Path) -> dict[str, Any] | None:
    """What identifies a catalogue file's content without reading it (None if unreadable:
    the catalogue loader then says what is wrong)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_pointer(root: Path) -> dict[str, Any] | None:
    try:
        pointer = json.loads((root / "current.json").read_text())
    except (OSError, ValueError):
        return None
    return pointer if isinstance(pointer, dict) and pointer.get("format") == FORMAT else None


def write(
    root: Path,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    offers_json: Sequence[str],
    offer_ids: Sequence[str],
    texts: Sequence[str],
) -> Path:
    """Write one index version and point ``current.json`` at it, atomically; older versions
    are removed (a process that still maps them keeps its pages until it exits)."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{meta['fingerprint'][:16]}-{meta['vocabulary'][:8]}"
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
    try:
        for key, array in arrays.items():
            np.save(staging / f"{key}.npy", np.ascontiguousarray(array))
        (staging / "offers.jsonl").write_text("\n".join(offers_json))
        (staging / "offer_ids.json").write_text(json.dumps(list(offer_ids)))
        (staging / "texts.json").write_text(json.dumps(list(texts)))
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = {"format": FORMAT, "dir": name, **meta}
    tmp = root / f".current.{os.getpid()}.json"
    tmp.write_text(json.dumps(pointer))
    os.replace(tmp, root / "current.json")
    for old in root.iterdir():
        if old.is_dir() and old.name != name and not old.name.startswith(".writing-"):
            shutil.rmtree(old, ignore_errors=True)
    return target


def restamp(root: Path, source: dict[str, Any] | None) -> None:
    """Record that the catalogue file changed on disk but not in content."""
    pointer = read_pointer(root)
    if pointer is None:
        return
    pointer["source"] = source
    tmp = root / f".current.{os.getpid()}.json"
    tmp.write_text(json.dumps(pointer))
    os.replace(tmp, root / "current.json")


def load(root: Path, pointer: dict[str, Any]) -> dict[str, Any] | None:
    """The mapped arrays, offers and texts of the version ``pointer`` names (None if gone)."""
    directory = root / pointer["dir"]
    try:
        # np.asarray: a plain ndarray view of the mapping (np.memmap's subclass hooks cost
        # microseconds on every index, which a batch does 100,000s of times).
        arrays = {path.stem: np.asarray(np.load(path, mmap_mode="r")) for path in directory.glob("*.npy")}
        lines = (directory / "offers.jsonl").read_text().split("\n")
        texts = json.loads((directory / "texts.json").read_text())
        ids = json.loads((directory / "offer_ids.json").read_text())
    except (OSError, ValueError):
        return None
    if lines == [""]:
        lines = []
    return {"arrays": arrays, "offers": LazyOffers(lines), "lines": lines, "ids": ids, "texts": texts}
