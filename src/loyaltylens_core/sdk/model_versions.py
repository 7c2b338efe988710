"""Numbered model versions in a directory (``<prefix><N>/card.json``) and which one serves.

Shared by the propensity plugins. ``train`` adds a version; the first becomes the champion,
later ones are challengers until ``loyaltylens promote`` makes one the champion, which it does
only when the challenger beats the champion on the same held-out window (both trained on the
same data, so the same evaluation split) or with ``--force``. ``rollback`` returns to the
previous champion. A pinned version (the plugin's ``version`` setting) overrides all of it.
The champion is one small JSON file, replaced atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from loyaltylens_core.kernel.errors import StageError, UsageError

CHAMPION_FILE = "champion.json"


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


def headline(card: dict[str, Any]) -> dict[str, float]:
    """The card's metrics on its headline window (the held-out latest one)."""
    window = card.get("evaluation", {}).get("headline", "test")
    return dict(card.get("metrics", {}).get(window, {}))


@dataclasses.dataclass(frozen=True)
class ModelStore:
    """A propensity plugin's versions: ``models`` on the component (capability
    ``VersionedModels``) is what `loyaltylens models`, `promote` and `rollback` act on."""

    directory: Path
    pattern: re.Pattern[str]
    prefix: str

    def versions(self) -> list[str]:
        return model_versions(self.directory, self.pattern)

    def next_version(self) -> str:
        return next_model_version(self.directory, self.pattern, self.prefix)

    def card(self, version: str) -> dict[str, Any]:
        versions = self.versions()
        if version not in versions:
            raise UsageError(f"model version {version!r} not found in {self.directory}",
                             f"available: {', '.join(versions) or 'none'}")
        return self._read_card(version)

    def _read_card(self, version: str) -> dict[str, Any]:
        card: dict[str, Any] = json.loads((self.directory / version / "card.json").read_text())
        return card

    def _state(self) -> dict[str, Any]:
        path = self.directory / CHAMPION_FILE
        try:
            state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            raise StageError(f"{path} is not valid JSON", "restore it or delete it (the newest version then serves)") \
                from None
        return state

    def champion(self) -> str | None:
        """The champion, if one was chosen and still exists."""
        found = self._state().get("champion")
        return found if found in self.versions() else None

    def serving(self) -> str | None:
        """What a pipeline loads when no version is pinned: the champion, else the newest."""
        versions = self.versions()
        return self.champion() or (versions[-1] if versions else None)

    def trained(self, version: str) -> str:
        """Record a newly trained version: the first becomes the champion, later ones are
        challengers. Returns its role."""
        if self.champion() is None:
            self._write({"champion": version, "history": [], "changed_at": _now()})
            return "champion"
        return "challenger"

    def listing(self) -> list[dict[str, Any]]:
        champion = self.champion()
        rows = []
        for version in self.versions():  # listed once, not once more per card
            card = self._read_card(version)
            rows.append({"version": version, "role": "champion" if version == champion else "challenger",
                         "created_at": card.get("created_at"), "training_data_hash": card.get("training_data_hash"),
                         **{k: headline(card).get(k) for k in ("auc", "brier", "ece")}})
        return rows

    def promote(self, version: str, *, force: bool = False) -> dict[str, Any]:
        """Make ``version`` the champion if it beats the current one on the same held-out
        window (higher AUC, calibration error no worse), or unconditionally with ``force``."""
        challenger = self.card(version)
        current = self.champion()
        if current == version:
            raise UsageError(f"{version} is already the champion", "train a challenger first")
        verdict = "no champion yet"
        if current is not None and not force:
            champion = self.card(current)
            if champion.get("training_data_hash") != challenger.get("training_data_hash"):
                raise UsageError(
                    f"{version} and the champion {current} were evaluated on different data "
                    f"({challenger.get('training_data_hash')} vs {champion.get('training_data_hash')}), "
                    "so their held-out windows differ",
                    "train a new challenger on the current data, or pass --force")
            new, old = headline(challenger), headline(champion)
            verdict = (f"AUC {new.get('auc', 0):.4f} vs {old.get('auc', 0):.4f}, "
                       f"ECE {new.get('ece', 1):.4f} vs {old.get('ece', 1):.4f}")
            if not (new.get("auc", 0) > old.get("auc", 0) and new.get("ece", 1) <= old.get("ece", 1)):
                raise UsageError(f"{version} does not beat the champion {current} on the held-out window ({verdict})",
                                 "keep the champion, or pass --force to promote anyway")
        state = self._state()
        history = [*state.get("history", []), *([current] if current else [])]
        self._write({"champion": version, "history": history, "changed_at": _now()})
        return {"champion": version, "previous": current, "forced": bool(force and current), "comparison": verdict}

    def rollback(self) -> dict[str, Any]:
        """Back to the previous champion."""
        state = self._state()
        history = [v for v in state.get("history", []) if v in self.versions()]
        current = self.champion()
        if not history:
            raise UsageError("there is no previous champion to roll back to", "`loyaltylens models` lists the versions")
        previous = history.pop()
        self._write({"champion": previous, "history": history, "changed_at": _now()})
        return {"champion": previous, "previous": current}

    def _write(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".champion-", dir=self.directory)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle, indent=2)
        os.replace(tmp, self.directory / CHAMPION_FILE)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
