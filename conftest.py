"""Fixtures for every package's tests (core and plugins)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The per-user cache (embeddings, ONNX export) lives under pytest's tmp dir for the
    session: a test never reads what an earlier run or the developer's own runs left in
    ~/.cache/loyaltylens, and never writes there."""
    before = os.environ.get("LOYALTYLENS_CACHE_DIR")
    os.environ["LOYALTYLENS_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if before is None:
        os.environ.pop("LOYALTYLENS_CACHE_DIR", None)
    else:
        os.environ["LOYALTYLENS_CACHE_DIR"] = before
