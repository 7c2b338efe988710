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


def make_distribution(site: Path, dist: str, module: str, source: str, entry: str, obj: str = "") -> None:
    """A plugin installed as its own distribution (a dist-info dir on PYTHONPATH)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[loyaltylens]\n{entry} = {module}{':' + obj if obj else ''}\n")
