"""The DuckDB feature store: raw tables in, feature snapshots out, all in SQL.

Features are materialised as snapshots (one row per customer per ``as_of`` date), so a
point-in-time read returns what was known then, and training examples pair a snapshot
with a label observed strictly after it. The latest snapshot is also held in memory:
a warm ``read_latest`` is a dict lookup, not a query.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Iterator, Sequence, TYPE_CHECKING

import duckdb

from loyaltylens_core.kernel.contracts import CustomerFeatures, SnapshotInfo, TrainingSet
from loyaltylens_core.sdk.demo import demo_data
from loyaltylens_core.kernel.errors import ConfigError, CustomerNotFound, StageError

if TYPE_CHECKING:
    from loyaltylens_core import StageContext

    from loyaltylens_feature_duckdb import DuckDBFeatureSettings

FEATURE_VERSION = "v1"
FEATURE_COLUMNS = (
    "customer_id", "recency_days", "frequency_30d", "monetary_90d", "offer_redemption_rate",
    "channel_preference", "engagement_score", "tier", "as_of", "feature_version",
)
RAW_FILES = ("customers.csv", "transactions.csv", "offer_events.csv")
NO_PURCHASE_RECENCY_DAYS = 365.0

FEATURES_SQL = """
CREATE OR REPLACE TABLE features AS
WITH snaps AS (SELECT unnest(?::DATE[]) AS as_of),
base AS (
    SELECT c.customer_id, c.tier, c.declared_channel, s.as_of
    FROM customers c CROSS JOIN snaps s
),
tx AS (
    SELECT b.customer_id, b.as_of,
        max(t.tx_date) AS last_tx,
        count(*) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 30 DAY) AS freq30,
        sum(t.amount) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 90 DAY) AS mon90,
        count(DISTINCT date_trunc('week', t.tx_date))
            FILTER (WHERE t.tx_date > b.as_of - INTERVAL 84 DAY) AS active_weeks,
        mode(t.channel) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 90 DAY) AS top_channel
    FROM base b JOIN transactions t ON t.customer_id = b.customer_id AND t.tx_date <= b.as_of
    GROUP BY b.customer_id, b.as_of
),
ev AS (
    SELECT b.customer_id, b.as_of,
        count(*) AS sent,
        count(*) FILTER (WHERE e.redeemed = 1 AND e.redeemed_date <= b.as_of) AS redeemed
    FROM base b JOIN offer_events e ON e.customer_id = b.customer_id AND e.sent_date <= b.as_of
    GROUP BY b.customer_id, b.as_of
)
SELECT
    b.customer_id,
    coalesce(date_diff('day', tx.last_tx, b.as_of), {no_purchase})::DOUBLE AS recency_days,
    coalesce(tx.freq30, 0)::INTEGER AS frequency_30d,
    round(coalesce(tx.mon90, 0), 2)::DOUBLE AS monetary_90d,
    CASE WHEN coalesce(ev.sent, 0) = 0 THEN 0.0 ELSE ev.redeemed / ev.sent END AS offer_redemption_rate,
    coalesce(tx.top_channel, b.declared_channel) AS channel_preference,
    least(1.0, 0.7 * coalesce(tx.active_weeks, 0) / 12.0
          + 0.3 * CASE WHEN coalesce(ev.sent, 0) = 0 THEN 0.0 ELSE ev.redeemed / ev.sent END)
          AS engagement_score,
    b.tier,
    b.as_of,
    '{version}' AS feature_version
FROM base b
LEFT JOIN tx ON tx.customer_id = b.customer_id AND tx.as_of = b.as_of
LEFT JOIN ev ON ev.customer_id = b.customer_id AND ev.as_of = b.as_of
ORDER BY b.customer_id, b.as_of
""".format(no_purchase=NO_PURCHASE_RECENCY_DAYS, version=FEATURE_VERSION)

LABELS_SQL = """
SELECT f.customer_id, f.as_of,
    (count(e.redeemed_date) > 0)::INTEGER AS label
FROM features f
LEFT JOIN offer_events e
    ON e.customer_id = f.customer_id AND e.redeemed = 1
    AND e.redeemed_date > f.as_of AND e.redeemed_date <= f.as_of + (? * INTERVAL 1 DAY)
WHERE f.as_of + (? * INTERVAL 1 DAY) <= (SELECT max(tx_date) FROM transactions)
GROUP BY f.customer_id, f.as_of
ORDER BY f.as_of, f.customer_id
"""


def connect(path: Path, read_only: bool = False) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """Open the DuckDB file: (connection, opened read-only?).

    When another process holds the file read-only (``loyaltylens serve`` workers), a
    writable open is refused; a built store is then opened read-only too, so ``run`` works
    beside a running service. A lock that leaves no way in is one clear line."""
    if read_only and not path.is_file():
        raise StageError(
            f"the feature store {path} does not exist and this process may not create it",
            "run `loyaltylens seed` (or start `loyaltylens serve`, which prepares the data dir first)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(path), read_only=read_only), read_only
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            if not read_only and path.is_file():
                try:
                    return duckdb.connect(str(path), read_only=True), True
                except duckdb.IOException:
                    pass
            raise StageError(
                f"the DuckDB file {path} is locked by another process",
                "wait for it to finish (e.g. a running batch) or set a different path",
            ) from None
        raise StageError(f"cannot open DuckDB file {path}: {exc}", "check the path and permissions") from None
    except PermissionError as exc:
        raise StageError(f"cannot open DuckDB file {path}: {exc.strerror}", "check permissions") from None


class DuckDBFeatureStore:
    # Latest features are a dict lookup (point-in-time reads are one local query): the
    # service may call it on its event loop.
    nonblocking = True

    def __init__(self, settings: DuckDBFeatureSettings, context: StageContext) -> None:
        self.settings = settings
        self.context = context
        self.path = settings.path or context.data_dir / "loyaltylens.duckdb"
        self.read_only = bool(getattr(context, "read_only", False))
        self.con, self.read_only = connect(self.path, self.read_only)
        self._latest: dict[str, tuple] | None = None
        self._latest_as_of: dt.date | None = None

    # --- building -------------------------------------------------------------------

    def _has_features(self) -> bool:
        row = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'features'"
        ).fetchone()
        return bool(row and row[0])

    def prepare(self) -> None:
        if not self._has_features():
            if self.read_only:
                raise StageError(
                    f"the feature store {self.path} holds no features and this process may not build them",
                    "run `loyaltylens seed` first",
                )
            self.materialize()
        self._load_latest()

    def close(self) -> None:
        self.con.close()

    def _source_dir(self, rebuild: bool) -> tuple[Path, str]:
        if self.settings.source_dir is None:
            demo = demo_data(self.context)
            return demo.directory, demo.content_hash
        source = Path(self.settings.source_dir)
        missing = [name for name in RAW_FILES if not (source / name).is_file()]
        if missing:
            raise ConfigError(
                f"feature source {source} lacks {', '.join(missing)}",
                "point [feature_store.duckdb] source_dir at a directory with "
                + ", ".join(RAW_FILES),
            )
        digest = hashlib.sha256()
        for name in RAW_FILES:
            digest.update((source / name).read_bytes())
        return source, digest.hexdigest()[:16]

    def materialize(self, rebuild: bool = False) -> int:
        """Load the raw tables and compute every feature snapshot, in one transaction."""
        source, data_hash = self._source_dir(rebuild)
        with self.context.progress.task("Computing features in DuckDB", total=3) as advance:
            self.con.execute("BEGIN TRANSACTION")
            try:
                for name in RAW_FILES:
                    table = name.removesuffix(".csv")
                    self.con.execute(
                        f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM read_csv(?, header=true, auto_detect=true)",
                        [str(source / name)],
                    )
                advance(1)
                end = self.con.execute("SELECT max(tx_date) FROM transactions").fetchone()[0]
                if end is None:
                    raise ConfigError(f"{source / 'transactions.csv'} has no rows", "add transactions")
                every = self.settings.snapshot_every_days
                snaps = [end - dt.timedelta(days=every * i) for i in reversed(range(self.settings.snapshots))]
                self.con.execute(FEATURES_SQL, [snaps])
                advance(1)
                self.con.execute(
                    "CREATE OR REPLACE TABLE feature_meta AS SELECT ? AS feature_version, ? AS data_hash, "
                    "now() AS built_at",
                    [FEATURE_VERSION, data_hash],
                )
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            advance(1)
        self._latest = None
        return self.con.execute("SELECT count(*) FROM features").fetchone()[0]

    # --- reading --------------------------------------------------------------------

    def _load_latest(self) -> dict[str, tuple]:
        if self._latest is None:
            rows = self.con.execute(
                f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features "
                "WHERE as_of = (SELECT max(as_of) FROM features)"
            ).fetchall()
            self._latest = {row[0]: row for row in rows}
            self._latest_as_of = rows[0][8] if rows else None
        return self._latest

    def _not_found(self, customer_id: str) -> CustomerNotFound:
        count = len(self._load_latest())
        hint = f"the feature store holds {count} customers"
        if count and self.settings.source_dir is None:
            hint += f" (demo ids C001 to C{count:03d})"
        return CustomerNotFound(f"customer {customer_id!r} not found", hint)

    def read_latest(self, customer_id: str, as_of: dt.date | None = None) -> CustomerFeatures:
        if as_of is None:
            row = self._load_latest().get(customer_id)
        else:
            # A cursor per call: a service reads from many threads, and one DuckDB
            # connection must not run two queries at once.
            with self.con.cursor() as cursor:
                rows = cursor.execute(
                    f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features "
                    "WHERE customer_id = ? AND as_of <= ? ORDER BY as_of DESC LIMIT 1",
                    [customer_id, as_of],
                ).fetchall()
            row = rows[0] if rows else None
        if row is None:
            if as_of is not None and customer_id in self._load_latest():
                raise CustomerNotFound(
                    f"customer {customer_id!r} has no features as of {as_of}",
                    "pick a later date",
                )
            raise self._not_found(customer_id)
        return CustomerFeatures(**dict(zip(FEATURE_COLUMNS, row)))

    def read_many(self, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
        if as_of is not None:
            return [self.read_latest(c, as_of) for c in customer_ids]
        latest = self._load_latest()
        out = []
        for customer_id in customer_ids:
            row = latest.get(customer_id)
            if row is None:
                raise self._not_found(customer_id)
            out.append(CustomerFeatures(**dict(zip(FEATURE_COLUMNS, row))))
        return out

    # --- whole snapshots (what `loyaltylens features materialize` copies) ----------

    def snapshot_info(self, as_of: dt.date | None = None) -> SnapshotInfo:
        """The latest snapshot, or the latest on or before ``as_of``, with a fingerprint of
        what its rows were computed from."""
        with self.con.cursor() as cursor:
            dates = [row[0] for row in cursor.execute("SELECT DISTINCT as_of FROM features ORDER BY as_of").fetchall()]
            chosen = [d for d in dates if as_of is None or d <= as_of]
            if not chosen:
                raise StageError(
                    f"the feature store has no snapshot on or before {as_of}",
                    "its snapshots are " + (", ".join(str(d) for d in dates) or "none: run `loyaltylens seed`"),
                )
            day = chosen[-1]
            count = cursor.execute("SELECT count(*) FROM features WHERE as_of = ?", [day]).fetchone()
            meta = cursor.execute("SELECT data_hash FROM feature_meta").fetchone()
        digest = hashlib.sha256(f"{meta[0] if meta else ''}:{FEATURE_VERSION}:{day}".encode()).hexdigest()[:16]
        return SnapshotInfo(as_of=day, customers=count[0] if count else 0, feature_version=FEATURE_VERSION,
                            fingerprint=digest)

    def snapshot_batches(self, as_of: dt.date, batch_size: int = 10_000) -> Iterator[list[CustomerFeatures]]:
        """Every customer of the snapshot dated ``as_of``, in id order, ``batch_size`` at a time."""
        with self.con.cursor() as cursor:
            cursor.execute(
                f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features WHERE as_of = ? ORDER BY customer_id", [as_of]
            )
            while rows := cursor.fetchmany(batch_size):
                yield [CustomerFeatures(**dict(zip(FEATURE_COLUMNS, row))) for row in rows]

    def customer_ids(self) -> list[str]:
        """Every customer in the latest snapshot (for ``loyaltylens batch --all``)."""
        return sorted(self._load_latest())

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        """Snapshots whose label window (as_of, as_of + horizon] lies inside the data."""
        label_rows = self.con.execute(LABELS_SQL, [horizon_days, horizon_days]).fetchall()
        if not label_rows:
            raise StageError(
                f"no feature snapshot has {horizon_days} days of data after it",
                "use more snapshots or a shorter horizon",
            )
        feats = {
            (row[0], row[8]): row
            for row in self.con.execute(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features").fetchall()
        }
        features = tuple(CustomerFeatures(**dict(zip(FEATURE_COLUMNS, feats[(c, a)]))) for c, a, _ in label_rows)
        labels = tuple(int(label) for _, _, label in label_rows)
        meta = self.con.execute("SELECT data_hash FROM feature_meta").fetchone()
        digest = hashlib.sha256(f"{meta[0] if meta else ''}:{FEATURE_VERSION}:{horizon_days}".encode())
        return TrainingSet(
            features=features, labels=labels, horizon_days=horizon_days, data_hash=digest.hexdigest()[:16],
            truth=self._truth(features, horizon_days),
        )

    def _truth(self, features: Sequence[CustomerFeatures], horizon_days: int) -> tuple[float, ...] | None:
        """The demo generator's true probabilities for these examples (None for real data)."""
        if self.settings.source_dir is not None:
            return None
        from loyaltylens_core.sdk.demo import true_probability

        found = true_probability(demo_data(self.context), [f.customer_id for f in features],
                                 [f.as_of for f in features], horizon_days)
        return None if found is None else tuple(float(p) for p in found)
