"""The per-user cache: work that is the same for every data dir on a machine (an ONNX
export of a model, the query vocabulary's vectors) is done once per user, not per data dir.

``$LOYALTYLENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/loyaltylens``, else ``~/.cache/loyaltylens``.
Everything in it can be deleted at any time; it is rebuilt on next use."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    root = os.environ.get("LOYALTYLENS_CACHE_DIR")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loyaltylens"
    return base.joinpath(*parts)
