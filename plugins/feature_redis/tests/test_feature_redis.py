"""The Redis online store against a real redis-server on 127.0.0.1, filled from the real
DuckDB offline store (resolved through the core's registry, as a user's config would)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest
import redis

from loyaltylens_core.kernel.errors import CustomerNotFound, StageError
from loyaltylens_core.kernel.pipeline import Pipeline
from loyaltylens_core.sdk.standins import redis_server

PASSWORD = "pw-7f3a-not-for-logs"
PREFIX = "loyaltylens:features"


@pytest.fixture(scope="module")
def server():
    with redis_server(PASSWORD) as srv:
        yield srv


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Demo data and DuckDB features, built once for the module."""
    path = tmp_path_factory.mktemp("data")
    env = {**os.environ, "LOYALTYLENS_DATA_DIR": str(path), "LOYALTYLENS_DEMO_CUSTOMERS": "400"}
    proc = subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "seed"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture
def settings(monkeypatch, data_dir, server):
    """Environment for a Redis-backed pipeline; every test gets its own key prefix."""
    prefix = f"t{time.monotonic_ns()}"
    values = {"LOYALTYLENS_DATA_DIR": str(data_dir), "LOYALTYLENS_DEMO_CUSTOMERS": "400",
              "REDIS_URL": server.url, "REDIS_PASSWORD": PASSWORD,
              "LOYALTYLENS_FEATURE_STORE_REDIS__KEY_PREFIX": prefix}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield values
    for key in [k for k in os.environ if k.startswith("LOYALTYLENS_FEATURE_STORE_REDIS__") and k not in values]:
        del os.environ[key]  # set by redis_store(**settings)


@contextlib.contextmanager
def redis_store(**env: str) -> Iterator[Any]:
    """The Redis feature store of a pipeline built as a user's config would (closed after)."""
    for key, value in env.items():
        os.environ[f"LOYALTYLENS_FEATURE_STORE_REDIS__{key.upper()}"] = value
    with Pipeline.from_config(None, use=["feature_store=redis"], needed=("feature_store",)) as pipeline:
        yield pipeline.component("feature_store")


@contextlib.contextmanager
def offline_store() -> Iterator[Any]:
    with Pipeline.from_config(None, use=["feature_store=duckdb"], needed=("feature_store",)) as pipeline:
        yield pipeline.component("feature_store")


def cli(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **popen)


def client(server) -> redis.Redis:
    return redis.Redis.from_url(server.url, password=PASSWORD)


def test_redis_and_duckdb_return_identical_features_for_every_customer(settings):
    with redis_store() as online, offline_store() as offline:  # a fresh Redis is filled on first use
        ids = offline.customer_ids()
        assert online.customer_ids() == ids and len(ids) == 400
        assert online.read_many(ids) == offline.read_many(ids)
        assert [online.read_latest(c) for c in ids[:50]] == offline.read_many(ids[:50])
        with pytest.raises(CustomerNotFound, match="'C9999' not found"):
            online.read_latest("C9999")


def test_point_in_time_reads_before_the_served_snapshot_come_from_the_offline_store(settings):
    with redis_store() as online, offline_store() as offline:
        day = dt.date(2026, 4, 15)
        assert online.read_latest("C002", as_of=day) == offline.read_latest("C002", as_of=day)
        assert online.read_latest("C002", as_of=day).as_of < online.read_latest("C002").as_of


def test_materialising_the_same_snapshot_twice_writes_nothing(settings):
    first = cli("features", "materialize", "--to", "redis", "--json")
    assert first.returncode == 0, first.stderr
    again = cli("features", "materialize", "--to", "redis", "--json")
    assert again.returncode == 0, again.stderr
    one, two = json.loads(first.stdout), json.loads(again.stdout)
    assert one["written"] == 400 and one["switched"] is True
    assert two["written"] == 0 and two["switched"] is False and two["snapshot"] == one["snapshot"]
    forced = json.loads(cli("features", "materialize", "--to", "redis", "--rebuild", "--json").stdout)
    assert forced["written"] == 400


def test_a_kill_mid_materialise_leaves_the_previous_snapshot_serving(settings, server):
    old = json.loads(cli("features", "materialize", "--to", "redis", "--as-of", "2026-05-30", "--json").stdout)
    slow = {"LOYALTYLENS_FEATURE_STORE_REDIS__BATCH_SIZE": "1"}  # one round trip per customer
    proc = subprocess.Popen([sys.executable, "-m", "loyaltylens_core.cli", "-q", "features", "materialize",
                             "--to", "redis"], env={**os.environ, **slow},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = client(server)
    prefix = settings["LOYALTYLENS_FEATURE_STORE_REDIS__KEY_PREFIX"]
    deadline = time.monotonic() + 60
    new = None
    while time.monotonic() < deadline and new is None:
        new = next((s.decode() for s in r.smembers(f"{prefix}:snapshots") if s.decode() != old["snapshot"]), None)
        time.sleep(0.005)
    assert new is not None, "the materialisation never started"
    while r.scard(f"{prefix}:snap:{new}:ids") < 20:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = r.scard(f"{prefix}:snap:{new}:ids")
    assert 0 < written < 400
    assert r.get(f"{prefix}:current").decode() == old["snapshot"]
    with redis_store() as online:
        assert online.read_latest("C001").as_of == dt.date(2026, 5, 30)  # the old snapshot, whole
    rerun = json.loads(cli("features", "materialize", "--to", "redis", "--json").stdout)
    assert rerun["snapshot"] == new and rerun["written"] == 400 and rerun["switched"] is True
    assert r.get(f"{prefix}:current").decode() == new
    assert 0 < r.ttl(f"{prefix}:snap:{old['snapshot']}:c:C001") <= 300  # the replaced snapshot is retiring


def test_readers_see_the_old_snapshot_or_the_new_never_an_error_during_a_switch(settings):
    assert cli("features", "materialize", "--to", "redis", "--as-of", "2026-05-30").returncode == 0
    seen: list[dt.date] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read(online: Any) -> None:
        ids = [f"C{i:03d}" for i in range(1, 401)]
        while not stop.is_set():
            try:
                seen.extend({f.as_of for f in online.read_many(ids[:40])})
                seen.append(online.read_latest(ids[len(seen) % 400]).as_of)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    with redis_store() as online:
        readers = [threading.Thread(target=read, args=(online,)) for _ in range(8)]
        for thread in readers:
            thread.start()
        try:
            switch = cli("features", "materialize", "--to", "redis")
            time.sleep(1.5)  # readers re-read the pointer within a second
        finally:
            stop.set()
            for thread in readers:
                thread.join()
    assert switch.returncode == 0, switch.stderr
    assert not errors, errors[:3]
    assert set(seen) == {dt.date(2026, 5, 30), dt.date(2026, 6, 29)}
    assert seen[-1] == dt.date(2026, 6, 29)


def test_redis_down_is_one_line_naming_the_url_without_the_password(settings, data_dir):
    dead = "redis://:hunter2-secret@127.0.0.1:9/0"
    proc = cli("-u", "feature_store=redis", "run", "C001", env={"REDIS_URL": dead, "REDIS_PASSWORD": ""})
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot reach Redis at redis://127.0.0.1:9/0")
    assert "hunter2" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_with_a_fallback_a_dead_redis_answers_from_duckdb_and_says_so(settings):
    env = {"REDIS_URL": "redis://127.0.0.1:9/0", "LOYALTYLENS_FEATURE_STORE_REDIS__FALLBACK": "duckdb"}
    proc = cli("-q", "-u", "feature_store=redis", "run", "C001", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "feature_store:redis_unreachable" in result["fallbacks"]
    direct = json.loads(cli("-q", "run", "C001", "--json").stdout)
    assert result["features"] == direct["features"]


def test_a_wrong_password_fails_even_with_a_fallback(settings):
    env = {"REDIS_PASSWORD": "wrong-secret-value", "LOYALTYLENS_FEATURE_STORE_REDIS__FALLBACK": "duckdb"}
    proc = cli("-u", "feature_store=redis", "run", "C001", env=env)
    assert proc.returncode == 4
    assert "refused the credentials" in proc.stderr and "wrong-secret-value" not in proc.stderr


def test_a_serving_process_never_writes_a_snapshot(settings):
    with Pipeline.from_config(None, use=["feature_store=redis"], needed=("feature_store",), read_only=True) as pipeline:
        with pytest.raises(StageError, match="holds no LoyaltyLens features"):
            pipeline.component("feature_store")


def test_a_snapshot_with_a_ttl_expires_and_reads_say_so(settings):
    with redis_store(ttl_s="1") as online:
        assert online.read_latest("C001").customer_id == "C001"
        time.sleep(2.2)
        with pytest.raises(StageError, match="has expired"):
            online.read_latest("C001")


def test_many_concurrent_readers_get_the_right_customer(settings):
    with offline_store() as offline:
        expected = {f.customer_id: f for f in offline.read_many(offline.customer_ids())}
    wrong: list[str] = []

    def read(online: Any, worker: int) -> None:
        for i in range(300):
            customer = f"C{(worker * 37 + i) % 400 + 1:03d}"
            if online.read_latest(customer) != expected[customer]:
                wrong.append(customer)

    with redis_store(pool_size="4") as online:
        threads = [threading.Thread(target=read, args=(online, w)) for w in range(16)]  # 16 threads, 4 connections
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not wrong


def test_a_repeat_read_is_answered_from_memory_and_a_switch_is_still_seen(settings, server):
    def hmget_calls() -> int:
        return int(client(server).info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))

    assert cli("features", "materialize", "--to", "redis", "--as-of", "2026-05-30").returncode == 0
    with redis_store() as online:
        first = online.read_latest("C001")
        calls = hmget_calls()
        assert online.read_latest("C001") == first and hmget_calls() == calls  # no round trip
        assert cli("features", "materialize", "--to", "redis").returncode == 0
        time.sleep(1.1)  # the pointer is re-read within a second
        assert online.read_latest("C001").as_of == dt.date(2026, 6, 29)
