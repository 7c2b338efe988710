"""The installed ``loyaltylens`` command, run as a user runs it, against plugins installed
as separate distributions (dist-info directories on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loyaltylens_core.kernel.stages import STAGES
from loyaltylens_core.sdk.standins import cli_environ, make_distribution

FAKE_MODULE = """
from loyaltylens_core.sdk.testing import FakePlugin
plugin = FakePlugin()
"""

BROKEN_MODULE = """
raise ImportError("No module named 'weaviate'")
"""


@pytest.fixture
def cli(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "loyaltylens-fakes", "llfakes", FAKE_MODULE, "fakes", "plugin")
    env = cli_environ()
    env["PYTHONPATH"] = str(site)
    env["LOYALTYLENS_DATA_DIR"] = str(tmp_path / "data")
    for stage in STAGES:
        env[f"LOYALTYLENS_{stage.upper()}"] = "fake"
    workdir = tmp_path / "work"
    workdir.mkdir()

    def run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loyaltylens_core.cli", *args],
            capture_output=True, text=True, env={**env, **(extra_env or {})}, cwd=workdir, timeout=120,
        )

    run.site = site  # type: ignore[attr-defined]
    run.workdir = workdir  # type: ignore[attr-defined]
    return run


def test_run_json_prints_the_pipeline_result(cli):
    proc = cli("run", "C001", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["customer_id"] == "C001"
    assert data["top_offer"]["offer_id"] == "F1"
    assert data["plugins"]["retriever"]["distribution"] == "loyaltylens-fakes"
    assert data["plugins"]["retriever"]["version"] == "1.2.3"


def test_run_panel_shows_offer_and_latency(cli):
    proc = cli("run", "C002")
    assert proc.returncode == 0, proc.stderr
    for text in ("propensity", "Free coffee", "latency", "total", "fake-template-1"):
        assert text in proc.stdout


def test_plugins_lists_separate_distributions_and_broken_ones(cli):
    make_distribution(cli.site, "loyaltylens-broken", "llbroken", BROKEN_MODULE, "broken")
    proc = cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    fakes = [r for r in rows if r["distribution"] == "loyaltylens-fakes"]
    assert {r["stage"] for r in fakes} == set(STAGES)
    assert all(r["status"] == "active" for r in fakes)
    broken = [r for r in rows if r["name"] == "broken"]
    assert broken and "No module named 'weaviate'" in broken[0]["status"]
    # The table form shows the same, and the broken plugin did not break the listing.
    table = cli("plugins")
    assert table.returncode == 0 and "loyaltylens-fakes" in table.stdout and "broken" in table.stdout


def test_broken_plugin_does_not_break_a_run_that_does_not_select_it(cli):
    make_distribution(cli.site, "loyaltylens-broken", "llbroken", BROKEN_MODULE, "broken")
    assert cli("run", "C001", "--json").returncode == 0


@pytest.mark.parametrize(
    "args, extra_env, code, message",
    [
        (["run", "C999"], {}, 2, "customer 'C999' not found"),
        (["run", "bad id"], {}, 2, "customer id 'bad id' is malformed"),
        (["run", ""], {}, 2, "customer id is empty"),
        (["--use", "retriever=fak", "run", "C001"], {}, 2, "did you mean 'fake'"),
        (["--use", "retreiver=fake", "run", "C001"], {}, 2, "unknown stage 'retreiver'"),
        (["run", "C001"], {"LOYALTYLENS_GENERATOR": "no-such-llm"}, 2, "no generator plugin named 'no-such-llm'"),
        (["run", "C001"], {"LOYALTYLENS_TOPK": "3"}, 2, "LOYALTYLENS_TOPK means nothing"),
        (["--config", "missing.toml", "run", "C001"], {}, 2, "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(cli, args, extra_env, code, message):
    proc = cli(*args, extra_env=extra_env)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_debug_shows_the_traceback(cli):
    proc = cli("--debug", "run", "C999")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "CustomerNotFound" in proc.stderr


def test_invalid_toml_file(cli):
    (cli.workdir / "loyaltylens.toml").write_text("[stages\n")
    proc = cli("run", "C001")
    assert proc.returncode == 2 and "is not valid TOML" in proc.stderr


def test_selection_by_file_is_used_by_the_run(cli):
    (cli.workdir / "loyaltylens.toml").write_text('top_k = 1\n')
    data = json.loads(cli("run", "C001", "--json").stdout)
    assert len(data["candidates"]) == 1


def test_config_show_masks_secrets_and_names_sources(cli):
    (cli.workdir / "loyaltylens.toml").write_text('seed = 7\n')
    proc = cli("config", "show", "--json", extra_env={"LOYALTYLENS_TOP_K": "5"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["core"]["seed"]["value"] == 7 and data["core"]["seed"]["source"].startswith("file:")
    assert data["core"]["top_k"] == {"value": 5, "source": "env:LOYALTYLENS_TOP_K"}
    assert data["stages"]["retriever"] == {"plugin": "fake", "source": "env:LOYALTYLENS_RETRIEVER"}
    assert cli("config", "show").returncode == 0


def test_help_is_fast_to_import_and_lists_commands(cli):
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "plugins", "config", "seed", "train", "index"):
        assert command in proc.stdout


def test_switches_take_no_value_in_help_and_brackets_survive(cli):
    """typer shows a switch as `--json <bool>`, which reads as if it took a value; and rich
    markup ate `[placements.NAME]` from a help line."""
    proc = cli("run", "--help", extra_env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│ --")}
    assert "<bool>" not in lines["--json"] and "<str>" in lines["--placement"]
    assert "[placements.NAME]" in lines["--placement"]
    top = cli("--help", extra_env={"COLUMNS": "200"}).stdout
    assert not [line for line in top.splitlines() if ("--debug" in line or "--quiet" in line) and "<bool>" in line]


CLOSING_MODULE = """
import os
from pathlib import Path
from loyaltylens_core.sdk.testing import FakePlugin, FakeRetriever

class ClosingRetriever(FakeRetriever):
    def close(self):
        Path(os.environ["CLOSED_MARKER"]).write_text("closed")

plugin = FakePlugin(retriever=ClosingRetriever())
"""


@pytest.mark.parametrize("args", [("run", "C001"), ("run", "NOBODY")])
def test_the_command_closes_its_components_on_the_way_out(cli, tmp_path, args):
    make_distribution(cli.site, "loyaltylens-fakes", "llfakes", CLOSING_MODULE, "fakes", "plugin")
    marker = tmp_path / "closed"
    proc = cli(*args, extra_env={"CLOSED_MARKER": str(marker)})
    assert proc.returncode == (0 if args[1] == "C001" else 2), proc.stderr
    assert marker.read_text() == "closed"  # after success and after an error alike


RAISING_MODULE = """
from loyaltylens_core.sdk.testing import FakeGenerator, FakePlugin

class CrashingGenerator(FakeGenerator):
    def generate(self, variables):
        raise RuntimeError("template cache is gone")

plugin = FakePlugin(generator=CrashingGenerator())
"""


def test_a_plugin_raising_at_run_time_is_named_with_its_stage_and_exits_4(cli):
    make_distribution(cli.site, "loyaltylens-fakes", "llfakes", RAISING_MODULE, "fakes", "plugin")
    proc = cli("run", "C001")
    assert proc.returncode == 4, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "generator plugin 'fake'" in line and "RuntimeError: template cache is gone" in line
    assert "unexpected" not in line
    debug = cli("--debug", "run", "C001")
    assert debug.returncode == 4 and "in generate" in debug.stderr  # the plugin's own traceback
