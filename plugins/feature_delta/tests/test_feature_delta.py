"""The Delta feature store against real Delta tables (delta-rs) on local disk and on a real
S3 protocol server (moto in server mode), filled from the real DuckDB offline store
through the CLI, as a user would."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import boto3
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from loyaltylens_core.kernel.errors import ConfigError, CustomerNotFound, StageError
from loyaltylens_core.kernel.pipeline import Pipeline
from loyaltylens_core.sdk.standins import redis_server, s3_server
from loyaltylens_core.sdk.testing import make_context
from loyaltylens_feature_delta import DeltaFeatureSettings, build

CUSTOMERS = 400


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Demo data and DuckDB features, built once for the module."""
    path = tmp_path_factory.mktemp("data")
    os.environ.update({"LOYALTYLENS_DATA_DIR": str(path), "LOYALTYLENS_DEMO_CUSTOMERS": str(CUSTOMERS)})
    proc = cli("-q", "seed")
    assert proc.returncode == 0, proc.stderr
    yield path
    for key in ("LOYALTYLENS_DATA_DIR", "LOYALTYLENS_DEMO_CUSTOMERS"):
        os.environ.pop(key, None)


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory) -> Path:
    """The embedded store's snapshots exported with `loyaltylens features export --to delta PATH`."""
    table = tmp_path_factory.mktemp("lake") / "customer_features"
    proc = cli("-q", "features", "export", "--to", "delta", str(table))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1,600 feature rows (4 snapshots" in proc.stdout and "(version 0) and 1,200 labels" in proc.stdout
    return table


def store(path: Path | str, **settings: Any) -> Any:
    built = build(DeltaFeatureSettings(path=str(path), **settings),
                  make_context(Path(os.environ["LOYALTYLENS_DATA_DIR"]), "feature_store", "delta"))
    built.prepare()
    return built


@contextlib.contextmanager
def duckdb_store() -> Iterator[Any]:
    with Pipeline.from_config(None, use=["feature_store=duckdb"], needed=("feature_store",)) as pipeline:
        yield pipeline.component("feature_store")


def rows_of(path: Path | str, **options: Any) -> pa.Table:
    return DeltaTable(str(path), **options).to_pyarrow_table()


def test_delta_and_duckdb_return_identical_features_for_every_customer(exported):
    delta = store(exported)
    with duckdb_store() as duckdb:
        ids = duckdb.customer_ids()
        assert delta.customer_ids() == ids and len(ids) == CUSTOMERS
        assert delta.read_many(ids) == duckdb.read_many(ids)
        for day in (dt.date(2026, 4, 15), dt.date(2026, 5, 30)):
            assert delta.read_many(ids[:50], as_of=day) == duckdb.read_many(ids[:50], as_of=day)
    with pytest.raises(CustomerNotFound, match="'C9999' not found.*holds 400 customers"):
        delta.read_latest("C9999")
    with pytest.raises(CustomerNotFound, match="no features as of 2026-01-01"):
        delta.read_latest("C001", as_of=dt.date(2026, 1, 1))


def test_the_table_has_the_databricks_feature_table_layout(exported):
    table = DeltaTable(str(exported))
    schema = {field.name: field for field in table.schema().fields}
    assert not schema["customer_id"].nullable and not schema["as_of"].nullable
    assert str(schema["as_of"].type) == 'PrimitiveType("date")'
    data = table.to_pyarrow_table()
    keys = list(zip(data["customer_id"].to_pylist(), data["as_of"].to_pylist()))
    assert len(keys) == len(set(keys)) == 4 * CUSTOMERS  # (customer_id, as_of) is the key


def test_training_set_is_the_point_in_time_join_and_matches_duckdb(exported):
    delta = store(exported)
    with duckdb_store() as duckdb:
        expected = duckdb.training_examples(30)
    got = delta.training_examples(30)
    assert got.features == expected.features and got.labels == expected.labels
    assert got.truth is None  # a Delta table has no generator truth
    with pytest.raises(StageError, match="no labels for a 14-day horizon.*holds 30 days"):
        delta.training_examples(14)


def test_exporting_the_same_snapshots_again_writes_nothing(exported):
    before = DeltaTable(str(exported)).version()
    again = cli("-q", "features", "export", "--to", "delta", str(exported))
    assert again.returncode == 0 and "already holds these 4 snapshots; nothing written" in again.stdout
    assert DeltaTable(str(exported)).version() == before
    rebuilt = cli("-q", "features", "export", "--to", "delta", str(exported), "--rebuild", "--json")
    assert rebuilt.returncode == 0 and '"written": true' in rebuilt.stdout
    assert DeltaTable(str(exported)).version() == before + 1


def test_time_travel_reads_the_configured_table_version(exported, tmp_path):
    path = tmp_path / "cf"
    write_deltalake(str(path), rows_of(exported))
    changed = rows_of(exported)
    gold = pa.array(["gold"] * changed.num_rows)
    write_deltalake(str(path), changed.set_column(changed.schema.get_field_index("tier"), "tier", gold),
                    mode="overwrite")
    assert store(path).read_latest("C001").tier == "gold"
    old = store(path, version=0)
    assert old.read_latest("C001") == store(exported).read_latest("C001")
    assert old.snapshot_info().fingerprint != store(path).snapshot_info().fingerprint
    with pytest.raises(StageError, match="has no version 7.*versions are 0 to 1"):
        store(path, version=7)


def test_a_table_with_other_column_names_and_a_timestamp_key_is_mapped(exported, tmp_path):
    """Databricks tables name things their own way and key time with a TIMESTAMP."""
    data = rows_of(exported).drop_columns(["feature_version"])
    data = data.rename_columns([{"tier": "loyalty_tier", "as_of": "ts"}.get(n, n) for n in data.column_names])
    stamps = pa.array([dt.datetime.combine(d, dt.time(6, 0)) for d in data["ts"].to_pylist()], pa.timestamp("us"))
    data = data.set_column(data.schema.get_field_index("ts"), "ts", stamps)
    path = tmp_path / "dbx"
    write_deltalake(str(path), data)
    mapped = store(path, columns={"tier": "loyalty_tier", "as_of": "ts"})
    reference = store(exported).read_latest("C002")
    assert mapped.read_latest("C002") == reference.model_copy(update={"feature_version": "delta-v0"})
    with pytest.raises(ConfigError, match="no column 'tier' for CustomerFeatures.tier.*loyalty_tier"):
        store(path, columns={"as_of": "ts"})
    with pytest.raises(ConfigError, match="columns names segment, not a feature field"):
        store(path, columns={"segment": "x"})


def test_a_bad_value_is_one_line_at_start_up(exported, tmp_path):
    data = rows_of(exported)
    tiers = ["diamond" if c == "C007" else t for c, t in zip(data["customer_id"].to_pylist(), data["tier"].to_pylist())]
    path = tmp_path / "bad"
    write_deltalake(str(path), data.set_column(data.schema.get_field_index("tier"), "tier", pa.array(tiers)))
    with pytest.raises(StageError, match=r"row of 'C007' \(as_of 2026-06-29\) has a bad tier.*'diamond'"):
        store(path)


def test_a_customer_missing_from_the_newest_snapshot_keeps_its_last_row(exported, tmp_path):
    """Feature tables are updated incrementally: a customer with no new row still has features."""
    data = rows_of(exported)
    keep = [not (c == "C005" and d == dt.date(2026, 6, 29))
            for c, d in zip(data["customer_id"].to_pylist(), data["as_of"].to_pylist())]
    path = tmp_path / "incremental"
    write_deltalake(str(path), data.filter(pa.array(keep)))
    delta = store(path)
    assert delta.read_latest("C005").as_of == dt.date(2026, 5, 30)
    latest = delta.snapshot_info()
    assert latest.as_of == dt.date(2026, 6, 29) and latest.customers == CUSTOMERS
    batch = [f for b in delta.snapshot_batches(latest.as_of) for f in b]
    assert len(batch) == CUSTOMERS and next(f for f in batch if f.customer_id == "C005").as_of == dt.date(2026, 5, 30)


def test_a_missing_table_is_one_line_naming_it_and_how_to_write_one(data_dir, tmp_path):
    with pytest.raises(StageError, match=f"no Delta table at {tmp_path / 'nowhere'}") as failure:
        store(tmp_path / "nowhere")
    assert "features export --to delta" in str(failure.value.hint)


def test_a_credential_in_the_config_is_refused():
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY is a credential: set it in the environment"):
        DeltaFeatureSettings(storage_options={"AWS_SECRET_ACCESS_KEY": "x"})


def test_without_a_path_the_default_table_is_filled_from_the_embedded_store_on_first_use(data_dir, exported):
    with Pipeline.from_config(None, use=["feature_store=delta"], needed=("feature_store",)) as pipeline:
        delta = pipeline.component("feature_store")
        assert delta.uri == str(data_dir / "delta" / "customer_features")
        assert delta.read_latest("C001") == store(exported).read_latest("C001")
    assert (data_dir / "delta" / "customer_features" / "_delta_log").is_dir()


SECRET = "moto-secret-not-for-output"


@pytest.fixture(scope="module")
def s3(data_dir):
    with s3_server() as url:
        env = {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": SECRET}
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key=SECRET).create_bucket(Bucket="lake")
        yield env


def test_an_s3_table_round_trips_with_credentials_from_the_environment(s3, exported, monkeypatch):
    uri = "s3://lake/features/customer_features"
    proc = cli("-q", "features", "export", "--to", "delta", uri, env=s3)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    remote = store(uri)
    local = store(exported)
    ids = local.customer_ids()
    assert remote.read_many(ids) == local.read_many(ids)
    assert remote.training_examples(30).labels == local.training_examples(30).labels
    with pytest.raises(StageError, match="no Delta table at s3://lake/elsewhere"):
        store("s3://lake/elsewhere")


def test_features_materialize_to_redis_from_delta(exported, data_dir, monkeypatch):
    with redis_server() as server:
        env = {"REDIS_URL": server.url, "LOYALTYLENS_FEATURE_STORE_DELTA__PATH": str(exported)}
        proc = cli("-q", "features", "materialize", "--to", "redis", "--from", "delta", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f'"customers": {CUSTOMERS}' in proc.stdout and '"switched": true' in proc.stdout
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with Pipeline.from_config(None, use=["feature_store=redis"], needed=("feature_store",)) as pipeline:
            online = pipeline.component("feature_store")
            ids = online.customer_ids()
            assert len(ids) == CUSTOMERS and online.read_many(ids) == store(exported).read_many(ids)
