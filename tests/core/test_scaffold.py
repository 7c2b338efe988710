"""`loyaltylens plugin new`: what it writes, and what it refuses."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from loyaltylens_core.cli.scaffold import COMPONENTS
from loyaltylens_core.kernel.stages import STAGES


def invoke(*args: str) -> SimpleNamespace:
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", *args], capture_output=True, text=True)
    return SimpleNamespace(exit_code=proc.returncode, output=proc.stdout + proc.stderr)


def test_every_stage_has_a_component_template():
    assert set(COMPONENTS) == set(STAGES)


def test_writes_a_package_with_its_entry_point(tmp_path):
    result = invoke("plugin", "new", "acme-store", "--stage", "feature_store", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    package = tmp_path / "loyaltylens-acme-store"
    pyproject = (package / "pyproject.toml").read_text()
    assert '[project.entry-points.loyaltylens]\nacme_store = "loyaltylens_acme_store"' in pyproject
    init = (package / "src/loyaltylens_acme_store/__init__.py").read_text()
    assert "def register_feature_stores(register: Register)" in init and 'register("acme-store", build' in init
    assert (package / "tests/test_acme_store.py").exists() and (package / "README.md").exists()
    compile((package / "src/loyaltylens_acme_store/component.py").read_text(), "component.py", "exec")


def test_refuses_bad_names_unknown_stages_and_existing_directories(tmp_path):
    bad = invoke("plugin", "new", "Acme Store", "--stage", "retriever", "--dir", str(tmp_path))
    assert bad.exit_code == 2 and "is not a lowercase name" in bad.output
    typo = invoke("plugin", "new", "acme", "--stage", "retriver", "--dir", str(tmp_path))
    assert typo.exit_code == 2 and "did you mean 'retriever'" in typo.output
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert invoke("plugin", "new", "acme", "--stage", "retriever", "--dir", str(tmp_path)).exit_code == 0
    marker = tmp_path / "loyaltylens-acme" / "README.md"
    marker.write_text("mine")
    again = invoke("plugin", "new", "acme", "--stage", "generator", "--dir", str(tmp_path))
    assert again.exit_code == 2 and "already exists" in again.output
    assert marker.read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
