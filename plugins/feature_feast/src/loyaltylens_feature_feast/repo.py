"""A ready-to-apply Feast repo from the embedded store (`loyaltylens features export --to
feast REPO`): the way to try the Feast path before pointing at your own repo.

It writes a file offline store (Parquet: every snapshot, plus the training labels), one
entity, one feature view, one feature service named ``loyaltylens`` and a
feature_store.yaml; `feast apply` and `feast materialize` are then yours to run, as in any
Feast repo. The online store is Redis when $REDIS_URL is set (the password as
``${REDIS_PASSWORD}``, which Feast expands when it loads the file, so it is never written),
else Feast's local SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.snapshots import all_snapshots, export_fingerprint, snapshot_rows
from loyaltylens_core.util.atomic import write_bytes, write_with

if TYPE_CHECKING:
    from loyaltylens_core.util.progress import Progress

MARKER = "# Written by `loyaltylens features export --to feast`, which rewrites it: delete this line to keep edits."
STATE = "loyaltylens-export.json"
DEFINITIONS = MARKER + '''
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String, UnixTimestamp

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)

customer_features = FeatureView(
    name="customer_features",
    entities=[customer],
    ttl=timedelta(days=400),
    online=True,
    source=FileSource(path="data/customer_features.parquet", timestamp_field="event_timestamp"),
    schema=[
        Field(name="recency_days", dtype=Float64),
        Field(name="frequency_30d", dtype=Int64),
        Field(name="monetary_90d", dtype=Float64),
        Field(name="offer_redemption_rate", dtype=Float64),
        Field(name="channel_preference", dtype=String),
        Field(name="engagement_score", dtype=Float64),
        Field(name="tier", dtype=String),
        Field(name="feature_version", dtype=String),
        # The snapshot date as a feature: point-in-time reads then say which snapshot answered.
        Field(name="as_of", dtype=UnixTimestamp),
    ],
)

loyaltylens = FeatureService(name="loyaltylens", features=[customer_features])
'''


def online_store_yaml(redis_url: str | None, password_set: bool) -> str:
    if not redis_url:
        return "online_store:\n  type: sqlite\n  path: data/online_store.db\n"
    parts = urlsplit(redis_url)
    connection = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    if parts.path.strip("/"):
        connection += f",db={parts.path.strip('/')}"
    if parts.scheme == "rediss":
        connection += ",ssl=true"
    if password_set or parts.password:
        connection += ",password=${REDIS_PASSWORD}"
    return f'online_store:\n  type: redis\n  connection_string: "{connection}"\n'


def feature_store_yaml(project: str, redis_url: str | None, password_set: bool) -> str:
    return (f"{MARKER}\nproject: {project}\nregistry: data/registry.db\nprovider: local\n"
            + online_store_yaml(redis_url, password_set)
            + "offline_store:\n  type: file\nentity_key_serialization_version: 3\n")


def write_repo(source: Any, repo: Path, horizon_days: int, rebuild: bool, progress: Progress,
               redis_url: str | None, password_set: bool) -> dict[str, Any]:
    """Write (or refresh) the repo; a repo this command did not write is never touched."""
    import pandas as pd

    config = repo / "feature_store.yaml"
    if config.is_file() and MARKER not in config.read_text():
        raise StageError(f"{repo} is already a Feast repo that LoyaltyLens did not write; not overwritten",
                         "export to a new directory, or point [feature_store.feast] repo_path at this one")
    snapshots = all_snapshots(source)
    fingerprint = export_fingerprint(snapshots, horizon_days)
    summary: dict[str, Any] = {"path": str(repo), "snapshots": [str(info.as_of) for info in snapshots],
                               "rows": sum(info.customers for info in snapshots), "fingerprint": fingerprint}
    state = repo / "data" / STATE
    if not rebuild and state.is_file() and json.loads(state.read_text()).get("fingerprint") == fingerprint:
        return {**summary, "written": False, "labels": None, "next": None}
    (repo / "data").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with progress.task(f"Writing {summary['rows']:,} feature rows for Feast", total=summary["rows"]) as advance:
        for batch in snapshot_rows(source, snapshots):
            rows += batch
            advance(len(batch))
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.to_datetime(frame["as_of"]).dt.tz_localize("UTC")
    frame["as_of"] = frame["event_timestamp"]
    # Every file written beside, then renamed: a reader sees the old file or the new one.
    write_with(repo / "data" / "customer_features.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    training = source.training_examples(horizon_days)
    labels = pd.DataFrame({"customer_id": [f.customer_id for f in training.features],
                           "as_of": [f.as_of for f in training.features], "horizon_days": horizon_days,
                           "label": list(training.labels)})
    write_with(repo / "data" / "labels.parquet", lambda tmp: labels.to_parquet(tmp, index=False))
    write_bytes(repo / "definitions.py", DEFINITIONS.encode())
    write_bytes(config, feature_store_yaml("loyaltylens", redis_url, password_set).encode())
    write_bytes(state, json.dumps({"fingerprint": fingerprint}).encode())  # last: the export is complete
    start, end = snapshots[0].as_of, snapshots[-1].as_of
    return {**summary, "written": True, "labels": len(labels),
            "next": f"cd {repo} && feast apply && feast materialize {start}T00:00:00 {end}T00:00:01"}
