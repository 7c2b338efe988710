"""Real `loyaltylens serve` processes (uvicorn on 127.0.0.1, a free port) over the suite's
built data dir, talked to with httpx."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loyaltylens_core.sdk.standins import free_port


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout} s: {self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(cli: Any, log_dir: Path, *flags: str, env: dict[str, str] | None = None, ready: bool = True,
           config: str | None = None) -> Server:
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    argv = [sys.executable, "-m", "loyaltylens_core.cli", "--quiet"]
    if config:
        argv += ["--config", config]
    argv += ["serve", "--port", str(port), *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**cli.env, **(env or {})}, cwd=cli.workdir)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    if ready:
        try:
            server.wait_ready()
        except AssertionError:
            server.stop(signal.SIGKILL)
            raise
    return server


@pytest.fixture(scope="session")
def built_cli(built):
    return built


# Caps make the same question give a new answer once an offer was handed out: the shared
# server's tests compare answers, so it does not count (test_decisioning.py tests caps).
UNCAPPED = {"LOYALTYLENS_DECISION_RULES__ENFORCE_CAPS": "false"}


@pytest.fixture(scope="module")
def server(built_cli, tmp_path_factory):
    """The default service (embedded plugins, one worker, no keys, caps not counted),
    shared by a module."""
    running = launch(built_cli, tmp_path_factory.mktemp("serve"), env=UNCAPPED)
    yield running
    running.stop()


@pytest.fixture
def start_server(built_cli, tmp_path):
    """start_server(*flags, env={...}, ready=True, config=None) -> Server, stopped after the test."""
    started: list[Server] = []

    def start(*flags: str, **kwargs: Any) -> Server:
        running = launch(built_cli, tmp_path, *flags, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
