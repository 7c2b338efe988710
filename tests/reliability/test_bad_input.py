"""Bad input through the installed CLI over the real default plugins: one clear line,
a non-zero exit, no traceback without --debug, nothing half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import io
import time

import pytest

from loyaltylens_core.sdk.standins import cli_environ, make_distribution

from .helpers import assert_one_clear_line, files_under

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args, code, fragments", [
    (["run", "C999999"], 2, ["customer 'C999999' not found", "C001 to C1000"]),
    (["run", "C 001"], 2, ["customer id 'C 001' is malformed"]),
    (["run", "C001';--"], 2, ["is malformed"]),
    (["run", ""], 2, ["customer id is empty"]),
    (["run", "   "], 2, ["customer id is empty"]),
    (["--use", "retriever=weaviat", "run", "C001"], 2, ["no retriever plugin named 'weaviat'", "did you mean 'weaviate'"]),
    (["--use", "retreiver=duckdb", "run", "C001"], 2, ["unknown stage 'retreiver'", "did you mean 'retriever'"]),
    (["--use", "retriever", "run", "C001"], 2, ["is not STAGE=NAME"]),
    (["deploy", "up", "--target", "sagemakr"], 2, ["no deploy_target plugin named 'sagemakr'", "did you mean 'sagemaker'"]),
    (["batch", "--out", "x.parquet"], 2, ["exactly one of --all or --ids"]),
    (["batch", "--all", "--out", "x.csv"], 2, ["must end in .parquet"]),
])
def test_bad_arguments(built, args, code, fragments):
    proc = built(*args)
    assert_one_clear_line(proc, code, *fragments)
    assert proc.stdout == ""


@pytest.mark.parametrize("toml, fragments", [
    ("[stages\n", ["is not valid TOML"]),
    ('[stages]\nretriever = "duckdbb"\n', ["no retriever plugin named 'duckdbb'", "did you mean 'duckdb'"]),
    ("top_k = 0\n", ["'top_k' is invalid"]),
    ("topk = 3\n", ["unknown key 'topk'", "did you mean 'top_k'"]),
    ("[propensity.torch]\nepochs = -1\n", ["[propensity.torch] setting 'epochs' is invalid"]),
    ('[propensity.torch]\nepoch = 3\n', ["no setting 'epoch'", "did you mean 'epochs'"]),
    ('[retriever.duckdbb]\npath = "x"\n', ["name no installed plugin", "did you mean 'duckdb'"]),
])
def test_bad_config_files(built, tmp_path, toml, fragments):
    path = tmp_path / "loyaltylens.toml"
    path.write_text(toml)
    assert_one_clear_line(built("--config", str(path), "run", "C001"), 2, *fragments)


@pytest.mark.parametrize("env, fragments", [
    ({"LOYALTYLENS_RETREIVER": "duckdb"}, ["LOYALTYLENS_RETREIVER means nothing", "LOYALTYLENS_RETRIEVER"]),
    ({"LOYALTYLENS_PROPENSITY_TORCH__EPOCHS": "many"}, ["'epochs' is invalid", "env:LOYALTYLENS_PROPENSITY_TORCH__EPOCHS"]),
    ({"LOYALTYLENS_TOP_K": "1000"}, ["'top_k' is invalid"]),
    ({"LOYALTYLENS_CONFIG": "/nonexistent/loyaltylens.toml"}, ["does not exist"]),
])
def test_bad_environment(built, env, fragments):
    assert_one_clear_line(built("run", "C001", extra_env=env), 2, *fragments)


def test_debug_adds_the_traceback(built):
    proc = built("--debug", "run", "C999999")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and proc.stderr.strip().endswith(
        "(demo ids C001 to C1000)")


BROKEN_IMPORT = "raise RuntimeError('plugin exploded on import')\n"
WRONG_TYPE = """
from loyaltylens_core import hookimpl

class WrongRetriever:
    def retrieve(self, query):
        return {"offer": "OFF001"}      # a dict, not a list of OfferCandidate

@hookimpl
def register_retrievers(register):
    register("wrong", lambda settings, context: WrongRetriever())
"""
NAN_FEATURES = """
from loyaltylens_core import hookimpl
from loyaltylens_core.sdk.testing import make_features

class NanStore:
    def __init__(self, value):
        self.value = value
    def read_latest(self, customer_id, as_of=None):
        data = make_features(customer_id).model_dump()
        data["monetary_90d"] = self.value
        return data

@hookimpl
def register_feature_stores(register):
    register("nan", lambda s, c: NanStore(float("nan")))
    register("inf", lambda s, c: NanStore(float("inf")))
    register("negative", lambda s, c: NanStore(-12.5))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    make_distribution(site, "loyaltylens-exploding", "ll_exploding", BROKEN_IMPORT, "exploding")
    make_distribution(site, "loyaltylens-wrong-type", "ll_wrong", WRONG_TYPE, "wrong")
    make_distribution(site, "loyaltylens-nan-store", "ll_nan", NAN_FEATURES, "nan")
    return site


def test_plugin_that_raises_on_import_is_reported_and_isolated(built, site):
    env = {"PYTHONPATH": str(site)}
    listing = built("plugins", extra_env=env)
    assert listing.returncode == 0 and "plugin exploded on import" in listing.stdout
    assert built("run", "C001", "--json", extra_env=env).returncode == 0  # not selected: no harm


def test_plugin_returning_the_wrong_type(built, site):
    proc = built("--use", "retriever=wrong", "run", "C001", extra_env={"PYTHONPATH": str(site)})
    assert_one_clear_line(proc, 3, "retriever plugin 'wrong'", "returned dict, expected a list of OfferCandidate")


@pytest.mark.parametrize("store, fragment", [("nan", "finite"), ("inf", "finite"), ("negative", "greater than or equal to 0")])
def test_nan_inf_negative_features_are_caught(built, site, store, fragment):
    proc = built("--use", f"feature_store={store}", "run", "C001", extra_env={"PYTHONPATH": str(site)})
    assert_one_clear_line(proc, 3, f"feature_store plugin '{store}'", "'monetary_90d'", fragment)


def test_nan_features_sent_to_the_endpoint_get_400(tmp_path):
    from loyaltylens_core.sdk.testing import write_tiny_archive

    sys.path.insert(0, str(tmp_path))
    from loyaltylens_deploy_sagemaker.container_check import invoke_in_container_handler
    from loyaltylens_core.kernel.errors import StageError
    from loyaltylens_core.sdk.testing import make_features

    archive = write_tiny_archive(tmp_path / "model.tar.gz")
    for bad in (float("nan"), float("inf"), -1.0):
        row = make_features().model_dump(mode="json")
        row["recency_days"] = bad
        with pytest.raises(StageError, match="answered 400: feature 'recency_days' must be a finite number >= 0"):
            invoke_in_container_handler(archive, [row])


def copy_data(built, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(built.data_dir, data, ignore=shutil.ignore_patterns("deploy*"))
    return data


def test_corrupt_model_file(built, tmp_path):
    data = copy_data(built, tmp_path)
    weights = sorted((data / "models").glob("propensity_v*/weights.safetensors"))
    assert weights
    for path in weights:
        path.write_bytes(b"\x00\x01garbage")
    proc = built("run", "C001", extra_env={"LOYALTYLENS_DATA_DIR": str(data)})
    assert_one_clear_line(proc, 4, "is corrupt", "loyaltylens train")


def test_missing_pinned_model_version(built):
    proc = built("run", "C001", extra_env={"LOYALTYLENS_PROPENSITY_TORCH__VERSION": "propensity_v99"})
    assert_one_clear_line(proc, 4, "'propensity_v99' not found", "available: propensity_v")


def test_checkpoint_with_a_pickled_object_is_refused(built, tmp_path):
    import torch

    data = copy_data(built, tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # A hand-made (or tampered) checkpoint in the legacy torch format, no safetensors beside it.
    weights = sorted((data / "models").glob("propensity_v*/weights.safetensors"))
    assert weights
    for path in weights:
        path.unlink()
        torch.save({"payload": Evil()}, path.with_name("weights.pt"))
    proc = built("run", "C001", extra_env={"LOYALTYLENS_DATA_DIR": str(data)})
    assert_one_clear_line(proc, 4, "holds pickled objects", "weights_only")
    assert not marker.exists()


def _archive(path, names):
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/absolute.txt", "code/../../escape.txt"])
def test_model_archive_with_escaping_paths_is_refused(built, tmp_path, name):
    archive = _archive(tmp_path / "evil.tar.gz", ["spec.json", name])
    proc = built("deploy", "up", "--archive", str(archive))
    assert proc.returncode == 4 and "points outside the archive" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "escape.txt").exists() and not os.path.exists("/tmp/absolute.txt")
    assert built("deploy", "status", "--json").stdout.count('"absent"') == 1


def test_missing_offers_catalogue(built, tmp_path):
    proc = built("run", "C001", extra_env={"LOYALTYLENS_RETRIEVER_DUCKDB__CATALOGUE": str(tmp_path / "offers.json")})
    assert_one_clear_line(proc, 2, "offer catalogue", "does not exist")


def _unshare_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="needs unshare to mount a read-only file system")
@pytest.mark.parametrize("populated", [False, True])
def test_read_only_data_dir(built, tmp_path, populated):
    data = copy_data(built, tmp_path) if populated else tmp_path / "data"
    data.mkdir(exist_ok=True)
    before = files_under(data)
    command = (f"mount --bind {data} {data} && mount -o remount,ro,bind {data} && "
               f"exec {sys.executable} -m loyaltylens_core.cli run C001")
    env = cli_environ()
    env["LOYALTYLENS_DATA_DIR"] = str(data)
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, env=env,
                          timeout=300)
    assert_one_clear_line(proc, 2, f"data dir {data} is not writable", "Read-only file system", "LOYALTYLENS_DATA_DIR")
    assert files_under(data) == before


def test_second_process_holding_the_duckdb_write_lock(built):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(60)",
         str(built.data_dir / "loyaltylens.duckdb")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        proc = built("run", "C001")
        assert_one_clear_line(proc, 4, "is locked by another process", "wait for it")
    finally:
        holder.kill()
        holder.wait()
    assert built("run", "C001").returncode == 0


def test_kill_9_during_first_build_leaves_nothing_half_written(cli, tmp_path):
    """Killed mid-training, the next run starts clean: no partial model version loads."""
    data = tmp_path / "data"
    env = cli_environ()
    env.update({"LOYALTYLENS_DATA_DIR": str(data), "LOYALTYLENS_DEMO_CUSTOMERS": "1000",
                "LOYALTYLENS_PROPENSITY_TORCH__EPOCHS": "200"})
    proc = subprocess.Popen([sys.executable, "-m", "loyaltylens_core.cli", "run", "C001"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (data / "loyaltylens.duckdb").exists():
        time.sleep(0.2)
    time.sleep(3)  # now inside training (200 epochs)
    proc.kill()
    proc.wait()
    assert not any(p.name.startswith("propensity_v") for p in (data / "models").glob("*"))
    env["LOYALTYLENS_PROPENSITY_TORCH__EPOCHS"] = "2"
    again = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "run", "C001", "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert '"model_version": "propensity_v1"' in again.stdout
