from __future__ import annotations

import subprocess
import sys

import pytest

from loyaltylens_core.sdk.standins import cli_environ

LITTER = ("ll-serve-*", "local-vertex-*", "ll-bench-*")


def _litter() -> set[str]:
    import tempfile
    from pathlib import Path

    root = Path(tempfile.gettempdir())
    return {str(p) for pattern in LITTER for p in root.glob(pattern)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._loyaltylens_litter = _litter()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite writes under pytest's tmp_path: anything it leaves in the system temp
    dir fails the run."""
    before = getattr(session.config, "_loyaltylens_litter", None)
    if before is None:
        return
    left = sorted(_litter() - before)
    if left:
        print(f"\nerror: the test suite left {len(left)} directories in the temp dir: {', '.join(left[:5])}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """The installed CLI over the real default plugins, on one data dir that starts empty
    (the first test to run builds demo data, features, model and index)."""
    data_dir = tmp_path_factory.mktemp("empty-data")
    workdir = tmp_path_factory.mktemp("work")
    # The session's per-user cache (root conftest.py) is kept, so every data dir the suite
    # builds shares one set of query-vocabulary vectors (~40 s of MiniLM on 2 cores, once).
    env = {k: v for k, v in cli_environ(LOYALTYLENS_DATA_DIR=str(data_dir), LOYALTYLENS_DEMO_CUSTOMERS="1000").items()
           if not k.startswith("AWS_")}

    def run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loyaltylens_core.cli", *args],
            capture_output=True, text=True, env={**env, **(extra_env or {})}, cwd=workdir, timeout=600,
        )

    run.data_dir = data_dir  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    run.workdir = workdir  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="session")
def built(cli):
    """The shared data dir, built (demo data, features, model, index) before a test uses it."""
    proc = cli("run", "C001", "--json")
    assert proc.returncode == 0, proc.stderr
    return cli
