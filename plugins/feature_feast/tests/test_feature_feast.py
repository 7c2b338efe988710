"""The Feast feature store against a real Feast repo made here: `feast apply` and `feast
materialize` (the Feast CLI), a file offline store of Parquet written from the real DuckDB
store, and a Redis online store on a real redis-server on 127.0.0.1 (with a password)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest

from loyaltylens_core.kernel.errors import ConfigError, CustomerNotFound, StageError
from loyaltylens_core.kernel.pipeline import Pipeline
from loyaltylens_core.sdk.standins import redis_server
from loyaltylens_core.sdk.testing import make_context
from loyaltylens_feature_feast import FeastFeatureSettings, build

pytestmark = pytest.mark.slow  # four `feast apply` / `feast materialize` runs (Feast imports in ~5 s)

CUSTOMERS = 400
PASSWORD = "feast-redis-pw-not-for-output"
# A team's own repo names things its own way: ours renamed, mapped back with `fields`.
RENAMED = {"tier": "loyalty_tier", "as_of": "snapshot_at"}
FIELDS = {"tier": "loyalty_tier", "as_of": "customer_features:snapshot_at"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def feast_cli(repo: Path, *args: str) -> None:
    feast = Path(sys.executable).with_name("feast")
    proc = subprocess.run([str(feast), *args], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "REDIS_PASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stderr[-2000:]


@contextlib.contextmanager
def duckdb_store() -> Iterator[Any]:
    with Pipeline.from_config(None, use=["feature_store=duckdb"], needed=("feature_store",)) as pipeline:
        yield pipeline.component("feature_store")


@pytest.fixture(scope="module")
def redis():
    with redis_server(PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def exported(tmp_path_factory, redis) -> Path:
    """`loyaltylens features export --to feast REPO` from the demo's DuckDB store, then the
    real `feast apply` and `feast materialize` into Redis, as the export's summary says."""
    data_dir = tmp_path_factory.mktemp("data")
    os.environ.update({"LOYALTYLENS_DATA_DIR": str(data_dir), "LOYALTYLENS_DEMO_CUSTOMERS": str(CUSTOMERS),
                       "REDIS_PASSWORD": PASSWORD})
    repo = tmp_path_factory.mktemp("feast") / "repo"
    proc = cli("-q", "features", "export", "--to", "feast", str(repo), "--json", env={"REDIS_URL": redis.url})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["written"] and summary["rows"] == 4 * CUSTOMERS and summary["labels"] == 3 * CUSTOMERS
    assert PASSWORD not in (repo / "feature_store.yaml").read_text()  # Feast expands ${REDIS_PASSWORD}
    feast_cli(repo, "apply")
    feast_cli(repo, "materialize", *summary["next"].split("feast materialize ")[1].split())
    yield repo
    for key in ("LOYALTYLENS_DATA_DIR", "LOYALTYLENS_DEMO_CUSTOMERS", "REDIS_PASSWORD"):
        os.environ.pop(key, None)


@pytest.fixture(scope="module")
def repo(exported, tmp_path_factory) -> Path:
    """A team's repo with other names (and its own project) over the same data."""
    repo = tmp_path_factory.mktemp("team")
    (repo / "data").mkdir()
    frame = pd.read_parquet(exported / "data" / "customer_features.parquet").rename(columns=RENAMED)
    frame.to_parquet(repo / "data" / "customer_features.parquet")
    shutil.copy(exported / "data" / "labels.parquet", repo / "data" / "labels.parquet")
    definitions = (exported / "definitions.py").read_text()
    for ours, theirs in RENAMED.items():
        definitions = definitions.replace(f'name="{ours}"', f'name="{theirs}"')
    (repo / "definitions.py").write_text(definitions)
    config = (exported / "feature_store.yaml").read_text().replace("project: loyaltylens", "project: team")
    (repo / "feature_store.yaml").write_text(config.split("\n", 1)[1])  # not the export's own any more
    feast_cli(repo, "apply")
    feast_cli(repo, "materialize", "2026-01-01T00:00:00", "2026-07-01T00:00:00")
    return repo


def feast_store(repo: Path, **settings: Any) -> Any:
    settings.setdefault("fields", FIELDS)
    built = build(FeastFeatureSettings(repo_path=repo, **settings),
                  make_context(Path(os.environ["LOYALTYLENS_DATA_DIR"]), "feature_store", "feast"))
    built.prepare()
    return built


@pytest.fixture(scope="module")
def feast(repo):
    return feast_store(repo)


def test_feast_and_duckdb_return_identical_features_for_every_customer(feast, monkeypatch):
    calls = []
    online = feast._store.get_online_features
    monkeypatch.setattr(feast._store, "get_online_features", lambda **kw: calls.append(kw) or online(**kw))
    with duckdb_store() as duckdb:
        ids = duckdb.customer_ids()
        assert len(ids) == CUSTOMERS
        assert feast.read_many(ids) == duckdb.read_many(ids)
        assert len(calls) == 1 and len(calls[0]["entity_rows"]) == CUSTOMERS  # one online call for all
        assert feast.read_latest("C007") == duckdb.read_latest("C007")
    with pytest.raises(CustomerNotFound, match="'C9999' not found"):
        feast.read_latest("C9999")


def test_point_in_time_reads_come_from_historical_retrieval(feast):
    day = dt.date(2026, 5, 15)
    with duckdb_store() as duckdb:
        ids = duckdb.customer_ids()[:40]
        assert feast.read_many(ids, as_of=day) == duckdb.read_many(ids, as_of=day)
    assert feast.read_latest("C002", as_of=day).as_of == dt.date(2026, 4, 30)
    with pytest.raises(CustomerNotFound, match="no features as of 2026-01-01"):
        feast.read_latest("C002", as_of=dt.date(2026, 1, 1))


def test_the_training_set_is_the_point_in_time_join_and_matches_duckdb(feast):
    with duckdb_store() as duckdb:
        expected = duckdb.training_examples(30)
    got = feast.training_examples(30)
    assert got.features == expected.features and got.labels == expected.labels
    with pytest.raises(StageError, match="none for a 14-day horizon.*hold 30 days"):
        feast.training_examples(14)


def test_without_an_as_of_feature_the_event_time_is_used(repo):
    store = feast_store(repo, fields={"tier": "loyalty_tier"})
    with duckdb_store() as duckdb:
        assert store.read_latest("C003") == duckdb.read_latest("C003")  # event time = the snapshot date


def test_a_field_with_no_feast_feature_is_one_line_naming_both(repo):
    with pytest.raises(ConfigError, match="Feast feature 'tier' for CustomerFeatures.tier is not in feature "
                                          "service 'loyaltylens'") as failure:
        feast_store(repo, fields={})
    assert "[feature_store.feast.fields] tier" in str(failure.value.hint)
    assert "customer_features:loyalty_tier" in str(failure.value.hint)
    with pytest.raises(ConfigError, match="fields names segment, not a mappable field"):
        feast_store(repo, fields={"segment": "x"})


def test_an_unknown_service_or_feature_is_refused_at_start_up(repo):
    with pytest.raises(ConfigError, match="no feature service 'nope'.*") as failure:
        feast_store(repo, feature_service="nope")
    assert "loyaltylens" in str(failure.value.hint)
    with pytest.raises(ConfigError, match="no feature 'customer_features:nope'"):
        feast_store(repo, features=["customer_features:nope"])
    listed = feast_store(repo, features=[f"customer_features:{name}" for name in (
        "recency_days", "frequency_30d", "monetary_90d", "offer_redemption_rate", "channel_preference",
        "engagement_score", "loyalty_tier", "feature_version", "snapshot_at")])
    assert listed.read_latest("C001") == feast_store(repo).read_latest("C001")


def test_no_repo_is_one_line(tmp_path):
    context = make_context(tmp_path, "feature_store", "feast")
    with pytest.raises(ConfigError, match="repo_path is not set") as failure:
        build(FeastFeatureSettings(), context).prepare()
    assert "features export --to feast REPO" in str(failure.value.hint)
    with pytest.raises(ConfigError, match="has no feature_store.yaml"):
        build(FeastFeatureSettings(repo_path=tmp_path), context).prepare()


def test_an_unreachable_online_store_is_one_line_without_the_password(repo, tmp_path):
    moved = tmp_path / "repo"
    moved.mkdir()
    (moved / "data").symlink_to(repo / "data")
    shutil.copy(repo / "definitions.py", moved / "definitions.py")
    (moved / "feature_store.yaml").write_text(
        re.sub(r'connection_string: "[^"]*"', f'connection_string: "127.0.0.1:1,password={PASSWORD}"',
               (repo / "feature_store.yaml").read_text()))
    store = feast_store(moved)
    with pytest.raises(StageError, match="cannot read online features at") as failure:
        store.read_latest("C001")
    assert PASSWORD not in str(failure.value) + str(failure.value.hint)


def test_the_exported_repo_serves_identical_features_with_no_mapping(exported):
    store = feast_store(exported, fields={})
    with duckdb_store() as duckdb:
        ids = duckdb.customer_ids()
        assert store.read_many(ids) == duckdb.read_many(ids)
        day = dt.date(2026, 5, 15)
        assert store.read_many(ids[:20], as_of=day) == duckdb.read_many(ids[:20], as_of=day)
        assert store.training_examples(30).labels == duckdb.training_examples(30).labels


def test_exporting_again_writes_nothing_and_a_foreign_repo_is_never_overwritten(exported, repo):
    again = cli("-q", "features", "export", "--to", "feast", str(exported), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["written"] is False
    foreign = cli("-q", "features", "export", "--to", "feast", str(repo))
    assert foreign.returncode != 0
    assert "already a Feast repo that LoyaltyLens did not write; not overwritten" in foreign.stderr
    assert "Traceback" not in foreign.stderr
