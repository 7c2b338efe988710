"""Shared checks for the reliability suite: how a failure must look to a user."""

from __future__ import annotations

import subprocess
from pathlib import Path


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Non-zero exit with the given code, exactly one ``error:`` line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}
