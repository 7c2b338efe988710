"""The Ray engine on a real local Ray (started by the engine, 2 CPUs), through the CLI.

Every other stage is a fake, registered through an entry point on PYTHONPATH so that Ray's
worker processes load exactly the plugins the driver does. The real pipeline on Ray is
tested against the local engine in tests/e2e/test_batch_ray.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FileSelector

from loyaltylens_core.sdk.standins import fake_plugin_environment, s3_bucket, s3_environment, s3_server

pytestmark = pytest.mark.slow

FAKES = """
import os
import signal
from pathlib import Path

from loyaltylens_core.sdk.testing import FakeFeatureStore, FakeGenerator, FakePlugin, make_features


class Generator(FakeGenerator):
    '''Misbehaves on request: RAY_TEST_KILL_ONCE=<marker file> kills its own process (once) at
    customer C0007; RAY_TEST_FAIL=<id> raises for that customer.'''

    def generate(self, variables):
        return super().generate(variables)

    def generate_many(self, many):
        ids = [v["customer_id"] for v in many]
        marker = os.environ.get("RAY_TEST_KILL_ONCE")
        if marker and "C0007" in ids and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ.get("RAY_TEST_FAIL") in ids:
            raise RuntimeError("the copy service refused " + os.environ["RAY_TEST_FAIL"])
        nodes = os.environ.get("RAY_TEST_NODES")
        if nodes:  # which Ray node scored this batch; each takes a while, as real scoring does
            import time

            import ray

            Path(nodes, ray.get_runtime_context().get_node_id()).touch()
            time.sleep(0.3)
        return [self.generate(v) for v in many]


customers = {f"C{i:04d}": make_features(f"C{i:04d}", recency_days=float(i % 50), engagement_score=(i % 10) / 10)
             for i in range(1, 41)}
plugin = FakePlugin(feature_store=FakeFeatureStore(customers), generator=Generator(),
                    propensity=__import__("loyaltylens_core.sdk.testing", fromlist=["x"]).FakePropensity(
                        lambda f: round(0.1 + 0.8 * f.engagement_score, 3)))
"""


@pytest.fixture
def cli(tmp_path):
    env = fake_plugin_environment(tmp_path, FAKES, "rayfakes")
    env.pop("RAY_ADDRESS", None)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join([f"C{i:04d}" for i in range(1, 41)] + ["C9999"]) + "\n")

    def run(engine: str, out: str, *extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loyaltylens_core.cli", "-q", "--use", f"batch_engine={engine}",
             "batch", "--ids", str(ids), "--out", str(tmp_path / out), "--chunk-size", "8", "--json", *extra],
            capture_output=True, text=True, env={**env, **more_env}, timeout=600,
        )

    run.tmp = tmp_path  # type: ignore[attr-defined]
    return run


def rows(path):
    """The rows without their impression ids: each batch names its own impressions."""
    return pq.read_table(path).drop_columns(["impression_id"]).to_pylist()


def test_ray_results_equal_the_local_engine_row_for_row(cli):
    local = cli("local", "local.parquet")
    assert local.returncode == 0, local.stderr
    ray = cli("ray", "ray.parquet", LOYALTYLENS_BATCH_ENGINE_RAY__BATCH_SIZE="5")
    assert ray.returncode == 0, ray.stderr
    summary = json.loads(ray.stdout)
    assert summary["engine"] == "ray" and summary["workers"] == 2
    assert summary["customers"] == 40 and summary["rejects"] == 1  # C9999 is unknown
    assert rows(cli.tmp / "ray.parquet") == rows(cli.tmp / "local.parquet")
    assert "C9999" in (cli.tmp / "ray.rejects.csv").read_text()
    assert not (cli.tmp / "ray.parquet.parts").exists()  # staging and parts cleaned up


def test_a_worker_killed_mid_job_is_retried_and_every_customer_is_written_once(cli):
    marker = cli.tmp / "killed"
    proc = cli("ray", "ray.parquet", RAY_TEST_KILL_ONCE=str(marker), LOYALTYLENS_BATCH_ENGINE_RAY__BATCH_SIZE="4")
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()  # a Scorer actor really died with SIGKILL
    ids = [r["customer_id"] for r in rows(cli.tmp / "ray.parquet")]
    assert sorted(ids) == [f"C{i:04d}" for i in range(1, 41)] and len(ids) == len(set(ids))


def test_a_failing_block_names_its_customers_and_a_rerun_computes_only_the_rest(cli):
    failed = cli("ray", "ray.parquet", RAY_TEST_FAIL="C0012")
    assert failed.returncode == 4, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: Ray batch failed for") and "C0012" in line and "the copy service refused" in line
    assert "generator=fake" in line and "Traceback" not in failed.stderr
    again = cli("ray", "ray.parquet")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed"] + summary["computed"] == 41 and summary["customers"] == 40


def test_too_many_cpus_per_worker_is_refused_before_it_can_hang(cli):
    proc = cli("ray", "ray.parquet", LOYALTYLENS_BATCH_ENGINE_RAY__CPUS_PER_WORKER=str(os.cpu_count()))
    assert proc.returncode == 2
    assert "leave no CPU for Ray Data's read tasks" in proc.stderr


def test_features_can_be_staged_in_object_storage(cli):
    with s3_server() as url:
        bucket = s3_bucket(url, "ll-batch")
        missing = cli("ray", "ray.parquet", **s3_environment(url),
                      LOYALTYLENS_BATCH_ENGINE_RAY__STAGING_DIR="s3://no-such-bucket/staging")
        assert missing.returncode == 4 and "s3://no-such-bucket/staging" in missing.stderr  # the bucket is used
        proc = cli("ray", "ray.parquet", **s3_environment(url),
                   LOYALTYLENS_BATCH_ENGINE_RAY__STAGING_DIR="s3://ll-batch/staging")
        assert proc.returncode == 0, proc.stderr
        left = bucket.get_file_info(FileSelector("ll-batch", recursive=True))
        assert not [f.path for f in left if "chunk-" in f.path]  # staging removed after the job
    assert len(rows(cli.tmp / "ray.parquet")) == 40


def test_an_unreachable_cluster_is_one_line_naming_the_address(cli):
    proc = cli("ray", "r.parquet", LOYALTYLENS_BATCH_ENGINE_RAY__ADDRESS="127.0.0.1:9")
    assert proc.returncode == 4, proc.stderr
    assert "cannot connect to Ray at 127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


def test_blocks_run_on_both_nodes_of_a_two_node_cluster(cli, tmp_path, monkeypatch):
    """A head and a worker node of 1 CPU each (how Ray's own tests build a cluster on one
    machine); the job joins it by address, and both nodes score batches. Each actor asks for
    0.75 CPU, so two cannot share a node: SPREAD is a preference, and once in a full suite run
    it left both actors on the head node (0.5 CPU each fit there). Ten blocks that each take
    0.3 s: Ray Data gives an actor at most 2 at a time and prefers the one beside the data, so
    five instant blocks could all be drained by one actor before the other asked."""
    from ray.cluster_utils import Cluster

    nodes = tmp_path / "nodes"
    nodes.mkdir()
    monkeypatch.setenv("RAY_TEST_NODES", str(nodes))  # inherited by the nodes' worker processes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        proc = cli("ray", "ray.parquet", "--chunk-size", "4", RAY_TEST_NODES=str(nodes),
                   LOYALTYLENS_BATCH_ENGINE_RAY__ADDRESS=cluster.address,
                   LOYALTYLENS_BATCH_ENGINE_RAY__BATCH_SIZE="4",
                   LOYALTYLENS_BATCH_ENGINE_RAY__CPUS_PER_WORKER="0.75",
                   LOYALTYLENS_BATCH_ENGINE_RAY__STALL_TIMEOUT_S="120")
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert len(rows(cli.tmp / "ray.parquet")) == 40
    assert len(list(nodes.iterdir())) == 2, "every batch ran on one node"


def test_a_cluster_without_room_for_every_actor_fails_naming_them_instead_of_hanging(cli):
    """Work waits for every Scorer actor (so a small job is not all taken by the first one up);
    when the cluster cannot place them all, the job fails within stall_timeout_s, one line."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.wait_for_nodes()
        proc = cli("ray", "ray.parquet",
                   LOYALTYLENS_BATCH_ENGINE_RAY__ADDRESS=cluster.address,
                   LOYALTYLENS_BATCH_ENGINE_RAY__CPUS_PER_WORKER="0.75",
                   LOYALTYLENS_BATCH_ENGINE_RAY__STALL_TIMEOUT_S="5")
    finally:
        cluster.shutdown()
    assert proc.returncode == 4, proc.stderr
    assert "Ray could not start 2 Scorer actors x 0.75 CPU within 5 s" in proc.stderr
    assert "Traceback" not in proc.stderr and "INFO" not in proc.stderr, proc.stderr  # Ray Data's console kept quiet
    assert not (cli.tmp / "ray.parquet").exists()
