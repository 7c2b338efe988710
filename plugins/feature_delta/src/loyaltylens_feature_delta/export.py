"""Writing an offline store's snapshots as a Delta feature table and its label table.

Each table is written in one commit (delta-rs streams the batches into files, then
commits once), so a reader sees the old table or the new one, never half. The commit
carries the source's fingerprint: exporting the same snapshots again writes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from loyaltylens_core.kernel.contracts import SnapshotInfo
from loyaltylens_core.sdk.snapshots import all_snapshots, export_fingerprint, snapshot_rows

from .tables import delta_errors, last_commit, open_table

if TYPE_CHECKING:
    import pyarrow as pa

    from loyaltylens_core.util.progress import Progress

FINGERPRINT_KEY = "loyaltylens.fingerprint"


def feature_schema() -> pa.Schema:
    """The Databricks feature-table layout of ``CustomerFeatures``: keys not null."""
    import pyarrow as pa

    return pa.schema([
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("as_of", pa.date32(), nullable=False),
        ("recency_days", pa.float64()), ("frequency_30d", pa.int64()), ("monetary_90d", pa.float64()),
        ("offer_redemption_rate", pa.float64()), ("channel_preference", pa.string()),
        ("engagement_score", pa.float64()), ("tier", pa.string()), ("feature_version", pa.string()),
    ])


def label_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field("customer_id", pa.string(), nullable=False),
                      pa.field("as_of", pa.date32(), nullable=False),
                      ("horizon_days", pa.int32()), ("label", pa.int8())])


def _feature_batches(source: Any, snapshots: list[SnapshotInfo], advance: Any) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    schema = feature_schema()
    for rows in snapshot_rows(source, snapshots):
        yield pa.RecordBatch.from_pylist(rows, schema=schema)
        advance(len(rows))


def _already_written(uri: str, options: dict[str, str], fingerprint: str) -> bool:
    from deltalake import DeltaTable

    with delta_errors(uri, "read"):
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return False
    return bool(last_commit(open_table(uri, options)).get(FINGERPRINT_KEY) == fingerprint)


def _write(uri: str, data: Any, options: dict[str, str], fingerprint: str, description: str) -> int:
    """One overwrite commit; returns the table version it made."""
    from deltalake import CommitProperties, write_deltalake

    with delta_errors(uri, "write"):
        write_deltalake(uri, data, mode="overwrite", schema_mode="overwrite", storage_options=options,
                        description=description,
                        commit_properties=CommitProperties(custom_metadata={FINGERPRINT_KEY: fingerprint}))
    return int(open_table(uri, options).version())


def write_tables(source: Any, uri: str, labels_uri: str, options: dict[str, str], horizon_days: int,
                 rebuild: bool, progress: Progress) -> dict[str, Any]:
    import pyarrow as pa

    snapshots = all_snapshots(source)
    fingerprint = export_fingerprint(snapshots, horizon_days)
    rows = sum(info.customers for info in snapshots)
    summary: dict[str, Any] = {
        "path": uri, "labels_path": labels_uri, "snapshots": [str(info.as_of) for info in snapshots],
        "rows": rows, "fingerprint": fingerprint,
    }
    if not rebuild and _already_written(uri, options, fingerprint) and _already_written(labels_uri, options,
                                                                                        fingerprint):
        return {**summary, "written": False, "version": open_table(uri, options).version(), "labels": None}
    training = source.training_examples(horizon_days)
    labels = pa.table({
        "customer_id": [f.customer_id for f in training.features], "as_of": [f.as_of for f in training.features],
        "horizon_days": [horizon_days] * len(training.labels), "label": list(training.labels),
    }, schema=label_schema())
    # Labels first: a crash between the two commits leaves new labels beside old features,
    # which the point-in-time join still reads correctly; the rerun writes both again.
    _write(labels_uri, labels, options, fingerprint, f"LoyaltyLens training labels, {horizon_days}-day horizon")
    with progress.task(f"Writing {rows:,} feature rows to Delta", total=rows) as advance:
        reader = pa.RecordBatchReader.from_batches(feature_schema(), _feature_batches(source, snapshots, advance))
        version = _write(uri, reader, options, fingerprint, "LoyaltyLens customer features (customer_id, as_of)")
    return {**summary, "written": True, "version": version, "labels": labels.num_rows}
