"""`loyaltylens plugin new` writes packages that install with `pip install -e` and whose
tests pass as generated, for every stage; and the installed plugin is then selectable.

The packages are installed into a throwaway venv layered on this project's environment
(a .pth runs site.addsitedir on it), so the project's own venv never sees them."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from loyaltylens_core.kernel.stages import STAGES
from loyaltylens_core.sdk.standins import cli_environ

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def layered_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin-venv")
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    project = sysconfig.get_paths()["purelib"]
    Path(purelib, "loyaltylens-project.pth").write_text(f"import site; site.addsitedir({project!r})\n")
    return python


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, layered_venv: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("plugins")
    packages = {}
    for stage in STAGES:
        proc = subprocess.run(
            [sys.executable, "-m", "loyaltylens_core.cli", "plugin", "new", f"acme-{stage.replace('_', '-')}",
             "--stage", stage, "--dir", str(out), "--json"],
            capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr
        packages[stage] = Path(json.loads(proc.stdout)["directory"])
    editable = [arg for path in packages.values() for arg in ("-e", str(path))]
    proc = subprocess.run([layered_venv, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           *editable], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return packages


@pytest.mark.parametrize("stage", STAGES)
def test_generated_plugin_installs_and_its_tests_pass(stage, generated, layered_venv):
    proc = subprocess.run([layered_venv, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=generated[stage], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_installed_plugins_are_listed_and_selectable(generated, layered_venv, tmp_path):
    env = cli_environ(LOYALTYLENS_DATA_DIR=str(tmp_path / "data"))
    listed = subprocess.run([layered_venv, "-m", "loyaltylens_core.cli", "plugins", "--json"],
                            capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    names = {(row["stage"], row["name"]) for row in json.loads(listed.stdout)}
    assert {(stage, f"acme-{stage.replace('_', '-')}") for stage in STAGES} <= names
    run = subprocess.run(
        [layered_venv, "-m", "loyaltylens_core.cli", "--use", "generator=acme-generator",
         "--use", "propensity=acme-propensity", "--use", "feature_store=acme-feature-store",
         "--use", "retriever=acme-retriever", "--use", "embedder=acme-embedder", "run", "C001", "--json"],
        capture_output=True, text=True, env=env,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["plugins"]["generator"]["name"] == "acme-generator"
    assert result["copy"]["prompt_version"] == "acme-generator-v1"
    assert result["propensity"]["model_version"] == "acme-propensity-1"
