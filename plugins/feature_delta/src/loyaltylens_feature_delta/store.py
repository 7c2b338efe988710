"""The Delta feature store: one Delta table read once into memory, every read a lookup.

The table has the layout of a Databricks feature table: primary key ``customer_id``,
timestamp key ``as_of``, one row per customer per snapshot. A customer's latest row is
what ``read_latest`` returns; a point-in-time read returns the newest row on or before
the date, as Databricks' ``FeatureLookup(timestamp_lookup_key=...)`` would. Training sets
join a label table to the features the same way, point in time.

The table is read at ``prepare`` (one scan of the columns LoyaltyLens uses, at the
configured ``version``), so the process serves from memory: a table of a few million rows
fits in about a GiB (320 bytes a row); anything larger belongs in an online store (``features
materialize --to redis --from delta``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import time
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

from pydantic import ValidationError

from loyaltylens_core.kernel.contracts import CustomerFeatures, SnapshotInfo, TrainingSet
from loyaltylens_core.kernel.errors import ConfigError, CustomerNotFound, StageError

from .tables import delta_errors, feature_table_uri, labels_table_uri, open_table, storage_options

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

    from loyaltylens_core import StageContext

    from loyaltylens_feature_delta import DeltaFeatureSettings

FIELDS = tuple(CustomerFeatures.model_fields)
AS_OF = FIELDS.index("as_of")
# Without a feature_version column, rows are named after the table version they were read at.
OPTIONAL = ("feature_version",)
LABEL_COLUMNS = ("customer_id", "as_of", "horizon_days", "label")
# Columns with a handful of distinct values: one object per value, not one per row.
REPEATED = ("channel_preference", "tier", "as_of", "feature_version")


def _shared(values: list[Any]) -> list[Any]:
    """The same list with equal values as one object (a third less memory per row)."""
    seen: dict[Any, Any] = {}
    return [seen.setdefault(value, value) for value in values]


class DeltaFeatureStore:
    # After prepare every read is an in-memory lookup: the service may call it on its loop.
    nonblocking = True

    def __init__(self, settings: DeltaFeatureSettings, context: StageContext) -> None:
        unknown = sorted(set(settings.columns) - set(FIELDS))
        if unknown:
            raise ConfigError(f"[feature_store.delta] columns names {', '.join(unknown)}, not a feature field",
                              "map any of: " + ", ".join(FIELDS))
        self.settings = settings
        self.context = context
        self.read_only = bool(context.read_only)
        self.uri = feature_table_uri(settings, context)
        self.labels_uri = labels_table_uri(settings, self.uri)
        self.options = storage_options(settings)
        self.table_version: int | None = None
        self.table_id = ""
        self._rows: list[tuple[Any, ...]] = []
        self._spans: dict[str, tuple[int, int]] = {}
        self._dates: list[dt.date] = []

    # --- loading --------------------------------------------------------------------

    def prepare(self) -> None:
        if self.table_version is not None:
            return
        if self.settings.path is None and not self._exists(self.uri):
            self._fill_default_table()
        self._load(open_table(self.uri, self.options, self.settings.version))

    def close(self) -> None:
        self._rows, self._spans = [], {}

    def _exists(self, uri: str) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(uri, storage_options=self.options))

    def _fill_default_table(self) -> None:
        """No path configured and nothing at the default one: write the embedded store's
        snapshots there, as a fresh Redis is filled on first use."""
        if self.read_only:
            raise StageError(f"no Delta table at {self.uri} and this process may not write one",
                             "run `loyaltylens features export --to delta` first")
        self.export_from(self.context.fallback("feature_store", "duckdb"))

    def _column_names(self, table: DeltaTable) -> dict[str, str]:
        """Our field -> the table's column, checked against the table's schema: a missing
        column is one line naming both."""
        present = {field.name for field in table.schema().fields}
        wanted = {name: self.settings.columns.get(name, name) for name in FIELDS}
        missing = [name for name, column in wanted.items() if column not in present and name not in OPTIONAL]
        if missing:
            first = missing[0]
            raise ConfigError(
                f"the Delta table {self.uri} has no column {wanted[first]!r} for CustomerFeatures.{first}"
                + (f" (nor {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
                f'map it: [feature_store.delta.columns] {first} = "<column>"; the table has '
                + ", ".join(sorted(present)))
        return {name: column for name, column in wanted.items() if column in present}

    def _load(self, table: DeltaTable) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        columns = self._column_names(table)
        with delta_errors(self.uri, "read"):
            data = table.to_pyarrow_table(columns=list(dict.fromkeys(columns.values())))
        data = pa.table({name: data[column] for name, column in columns.items()})
        if pa.types.is_timestamp(data.schema.field("as_of").type):  # a Databricks timestamp key
            data = data.set_column(AS_OF, "as_of", pc.cast(data["as_of"], pa.date32()))
        version = table.version()
        if "feature_version" not in columns:
            data = data.append_column("feature_version", pa.array([f"delta-v{version}"] * data.num_rows))
        data = data.select(list(FIELDS)).sort_by([("customer_id", "ascending"), ("as_of", "ascending")])
        rows = list(zip(*(_shared(data[name].to_pylist()) if name in REPEATED else data[name].to_pylist()
                          for name in FIELDS)))
        spans: dict[str, tuple[int, int]] = {}
        for index, row in enumerate(rows):
            start = spans.get(row[0], (index, index))[0]
            spans[row[0]] = (start, index + 1)
        self._rows, self._spans = rows, spans
        self._dates = [row[AS_OF] for row in rows]
        self.table_version, self.table_id = version, str(table.metadata().id)
        self._check_latest()

    def _check_latest(self) -> None:
        """Every customer's latest row against the contract, once: a bad value (a tier we do
        not know, a negative amount) is one line at start-up, not a failure per request."""
        for customer_id in self._spans:
            row = self._latest_row(customer_id)
            try:
                CustomerFeatures(**dict(zip(FIELDS, row)))
            except ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(part) for part in error["loc"])
                raise StageError(
                    f"the Delta table {self.uri} row of {customer_id!r} (as_of {row[AS_OF]}) has a bad {field}: "
                    f"{error['msg']} (got {error.get('input')!r})",
                    "fix the row, or map the right column in [feature_store.delta.columns]") from None

    # --- reading --------------------------------------------------------------------

    def _latest_row(self, customer_id: str) -> tuple[Any, ...]:
        return self._rows[self._spans[customer_id][1] - 1]

    def _row_on_or_before(self, customer_id: str, day: dt.date) -> tuple[Any, ...] | None:
        start, end = self._spans[customer_id]
        index = bisect.bisect_right(self._dates, day, start, end)
        return self._rows[index - 1] if index > start else None

    def _not_found(self, customer_id: str) -> CustomerNotFound:
        return CustomerNotFound(f"customer {customer_id!r} not found",
                                f"the Delta table {self.uri} (version {self.table_version}) holds "
                                f"{len(self._spans):,} customers")

    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures:
        self.prepare()
        if customer_id not in self._spans:
            raise self._not_found(customer_id)
        row = self._latest_row(customer_id) if as_of is None else self._row_on_or_before(customer_id, as_of)
        if row is None:
            raise CustomerNotFound(f"customer {customer_id!r} has no features as of {as_of}", "pick a later date")
        return CustomerFeatures(**dict(zip(FIELDS, row)))

    def read_many(self, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
        if as_of is not None:
            return [self.read_latest(customer_id, as_of) for customer_id in customer_ids]
        self.prepare()
        rows, spans = self._rows, self._spans
        try:
            return [CustomerFeatures(**dict(zip(FIELDS, rows[spans[customer_id][1] - 1])))
                    for customer_id in customer_ids]
        except KeyError as missing:
            raise self._not_found(str(missing.args[0])) from None

    def customer_ids(self) -> list[str]:
        self.prepare()
        return sorted(self._spans)

    # --- whole snapshots (what `features materialize --from delta` copies) ----------

    def snapshot_info(self, as_of: dt.date | None = None) -> SnapshotInfo:
        """The newest snapshot date (on or before ``as_of``); its customers are those with a
        row on or before it, and its fingerprint names the table and version read."""
        self.prepare()
        dates = sorted(set(self._dates))
        chosen = [day for day in dates if as_of is None or day <= as_of]
        if not chosen:
            raise StageError(f"the Delta table {self.uri} has no snapshot on or before {as_of}",
                             "its snapshots are " + (", ".join(str(day) for day in dates) or "none"))
        day = chosen[-1]
        customers = sum(1 for start, _ in self._spans.values() if self._dates[start] <= day)
        versions = {self._rows[end - 1][-1] for _, end in self._spans.values()}
        digest = hashlib.sha256(f"{self.table_id}:{self.table_version}:{day}".encode()).hexdigest()[:16]
        return SnapshotInfo(as_of=day, customers=customers, feature_version=",".join(sorted(versions)),
                            fingerprint=digest)

    def snapshot_batches(self, as_of: dt.date, batch_size: int = 10_000) -> Iterator[list[CustomerFeatures]]:
        """Each customer's newest row on or before ``as_of``, in id order, ``batch_size`` at a time."""
        batch: list[CustomerFeatures] = []
        for customer_id in self.customer_ids():
            row = self._row_on_or_before(customer_id, as_of)
            if row is None:
                continue
            batch.append(CustomerFeatures(**dict(zip(FIELDS, row))))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # --- training -------------------------------------------------------------------

    def _labels(self, horizon_days: int) -> tuple[pa.Table, DeltaTable]:
        import pyarrow.compute as pc

        labels = open_table(self.labels_uri, self.options)
        present = {field.name for field in labels.schema().fields}
        missing = [column for column in LABEL_COLUMNS if column not in present]
        if missing:
            raise ConfigError(f"the label table {self.labels_uri} has no column {missing[0]!r}",
                              "it needs " + ", ".join(LABEL_COLUMNS) + " (one row per labelled snapshot)")
        with delta_errors(self.labels_uri, "read"):
            data = labels.to_pyarrow_table(columns=list(LABEL_COLUMNS))
        chosen = data.filter(pc.equal(data["horizon_days"], horizon_days))
        if chosen.num_rows == 0:
            held = sorted(set(data["horizon_days"].to_pylist()))
            raise StageError(f"the label table {self.labels_uri} has no labels for a {horizon_days}-day horizon",
                             "it holds " + (", ".join(f"{h} days" for h in held) or "no rows")
                             + f"; export with --horizon-days {horizon_days} or train with one of those")
        return chosen.sort_by([("as_of", "ascending"), ("customer_id", "ascending")]), labels

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        """Each label joined to the customer's newest feature row on or before the label's
        ``as_of`` (a point-in-time join); labels with no such row are left out."""
        self.prepare()
        labels, table = self._labels(horizon_days)
        features: list[CustomerFeatures] = []
        outcomes: list[Literal[0, 1]] = []
        for customer_id, day, label in zip(labels["customer_id"].to_pylist(), labels["as_of"].to_pylist(),
                                           labels["label"].to_pylist()):
            if isinstance(day, dt.datetime):
                day = day.date()
            row = self._row_on_or_before(customer_id, day) if customer_id in self._spans else None
            if row is not None:
                features.append(CustomerFeatures(**dict(zip(FIELDS, row))))
                outcomes.append(1 if label else 0)
        if not features:
            raise StageError(f"no label in {self.labels_uri} matches a feature row in {self.uri}",
                             "the two tables must share customer ids, and labels must not predate every snapshot")
        digest = hashlib.sha256(
            f"{self.table_id}:{self.table_version}:{table.metadata().id}:{table.version()}:{horizon_days}".encode())
        return TrainingSet(features=tuple(features), labels=tuple(outcomes), horizon_days=horizon_days,
                           data_hash=digest.hexdigest()[:16])

    # --- writing (`loyaltylens features export --to delta`) -------------------------

    def export_from(self, source: Any, destination: str | None = None, horizon_days: int = 30,
                    rebuild: bool = False) -> dict[str, Any]:
        """Write every snapshot of ``source`` (an offline store) as this feature table, and
        its training labels beside it. Idempotent: the same source snapshots again write
        nothing (the fingerprint is kept in the commit's metadata)."""
        from .export import write_tables

        if self.read_only:
            raise StageError("this process opened the stores read-only and may not write a Delta table",
                             "run `loyaltylens features export --to delta` outside the service")
        uri = destination or self.uri
        labels_uri = labels_table_uri(self.settings, uri) if destination else self.labels_uri
        started = time.perf_counter()
        summary = write_tables(source, uri, labels_uri, self.options, horizon_days, rebuild, self.context.progress)
        if uri == self.uri:
            self.table_version = None  # read what was written on next use
        return {**summary, "seconds": round(time.perf_counter() - started, 3)}
