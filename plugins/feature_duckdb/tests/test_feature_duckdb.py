"""The DuckDB feature store against a real DuckDB file built from the demo data."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import duckdb
import pytest

from loyaltylens_core.kernel.errors import ConfigError, CustomerNotFound, StageError
from loyaltylens_core.sdk.testing import make_context
from loyaltylens_feature_duckdb import DuckDBFeatureSettings, build


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    store = build(DuckDBFeatureSettings(), make_context(data_dir, "feature_store", "duckdb"))
    store.prepare()
    return store


def test_features_are_materialised_into_the_duckdb_file(store):
    assert store.path.is_file()
    con = duckdb.connect(str(store.path), read_only=False)
    assert con.execute("SELECT count(DISTINCT customer_id) FROM features").fetchone()[0] == 300


def test_read_latest_returns_the_newest_snapshot(store):
    features = store.read_latest("C001")
    assert features.customer_id == "C001"
    assert features.as_of == dt.date(2026, 6, 29)
    assert features.feature_version == "v1"
    assert features.channel_preference in ("in-store", "mobile", "web")
    assert 0 <= features.engagement_score <= 1


def test_point_in_time_read_sees_only_the_past(store):
    past = store.read_latest("C002", as_of=dt.date(2026, 4, 15))
    assert past.as_of == dt.date(2026, 3, 31)
    recent_tx = store.con.execute(
        "SELECT count(*) FROM transactions WHERE customer_id = 'C002' "
        "AND tx_date > DATE '2026-03-01' AND tx_date <= DATE '2026-03-31'"
    ).fetchone()[0]
    assert past.frequency_30d == recent_tx


def test_features_match_sql_over_raw_transactions(store):
    f = store.read_latest("C003")
    total = store.con.execute(
        "SELECT coalesce(sum(amount), 0) FROM transactions WHERE customer_id = 'C003' "
        "AND tx_date > DATE '2026-06-29' - INTERVAL 90 DAY AND tx_date <= DATE '2026-06-29'"
    ).fetchone()[0]
    assert f.monetary_90d == pytest.approx(float(total), abs=0.01)


def test_read_many_keeps_order_and_fails_on_unknown(store):
    ids = ["C010", "C002", "C150"]
    assert [f.customer_id for f in store.read_many(ids)] == ids
    with pytest.raises(CustomerNotFound, match="C999"):
        store.read_many(["C001", "C999"])


def test_unknown_customer_hint_names_the_range(store):
    with pytest.raises(CustomerNotFound, match="C001 to C300"):
        store.read_latest("C4000")


def test_training_labels_come_from_after_as_of(store):
    data = store.training_examples(30)
    assert len(data.features) == len(data.labels) == 900  # 3 snapshots with a full window
    assert max(f.as_of for f in data.features) <= dt.date(2026, 6, 29) - dt.timedelta(days=30)
    # Recompute one label by hand from the raw redemptions.
    f, label = data.features[0], data.labels[0]
    redeemed = store.con.execute(
        "SELECT count(*) FROM offer_events WHERE customer_id = ? AND redeemed = 1 "
        "AND redeemed_date > ? AND redeemed_date <= ? + INTERVAL 30 DAY",
        [f.customer_id, f.as_of, f.as_of],
    ).fetchone()[0]
    assert label == int(redeemed > 0)


def test_missing_source_files_are_a_clear_error(tmp_path):
    settings = DuckDBFeatureSettings(source_dir=tmp_path)
    store = build(settings, make_context(tmp_path / "data"))
    with pytest.raises(ConfigError, match="lacks customers.csv"):
        store.prepare()


def test_second_process_holding_the_lock_is_a_clear_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb,sys,time; c=duckdb.connect({str(path)!r}); print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StageError, match="locked by another process"):
            build(DuckDBFeatureSettings(path=path), make_context(tmp_path))
    finally:
        holder.kill()


def test_a_snapshot_is_exported_whole_in_batches_with_a_stable_fingerprint(store):
    info = store.snapshot_info()
    assert info.as_of == dt.date(2026, 6, 29) and info.customers == 300 and info.feature_version == "v1"
    assert store.snapshot_info() == info  # same data, same fingerprint
    earlier = store.snapshot_info(dt.date(2026, 4, 15))
    assert earlier.as_of == dt.date(2026, 3, 31) and earlier.fingerprint != info.fingerprint
    batches = list(store.snapshot_batches(info.as_of, batch_size=128))
    assert [len(b) for b in batches] == [128, 128, 44]
    exported = [f for batch in batches for f in batch]
    assert exported == store.read_many(store.customer_ids())
    with pytest.raises(StageError, match="no snapshot on or before 2020-01-01"):
        store.snapshot_info(dt.date(2020, 1, 1))
