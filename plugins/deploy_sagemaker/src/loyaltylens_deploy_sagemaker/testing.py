"""Test helpers for code that talks to SageMaker: moto in server mode on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

from loyaltylens_core.sdk.standins import free_port, start_local_process


def start_moto(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """moto in server mode on 127.0.0.1, in its own process, spoken to by real boto3."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return start_local_process(argv, port, "moto server", extra_env), f"http://127.0.0.1:{port}"
