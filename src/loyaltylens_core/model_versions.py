"""Numbered model versions in a directory (``<prefix><N>/card.json``), shared by the
propensity plugins: which exist, and what the next one is called."""

from __future__ import annotations

import re
from pathlib import Path


def model_versions(model_dir: Path, pattern: re.Pattern[str]) -> list[str]:
    """Complete versions (a ``card.json`` is written last), oldest first by their number
    (``v10`` after ``v9``). ``pattern`` matches a directory name and captures the number."""
    if not model_dir.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in model_dir.iterdir()
             if (m := pattern.match(p.name)) and (p / "card.json").is_file()]
    return [name for _, name in sorted(found)]


def next_model_version(model_dir: Path, pattern: re.Pattern[str], prefix: str) -> str:
    """``<prefix><N+1>`` after the newest complete version (``<prefix>1`` for the first)."""
    existing = model_versions(model_dir, pattern)
    match = pattern.match(existing[-1]) if existing else None
    return f"{prefix}{int(match.group(1)) + 1 if match else 1}"
