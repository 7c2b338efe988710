"""The feedback_store stage's data: impressions (every offer `run`, `batch` or the service
hands out) and outcomes (what customers did with them), as Arrow schemas and the
conversions into them.

A feedback store plugin reads and writes these tables; the app layer's recorder
(``loyaltylens_core.loop.impressions``) fills them from the pipeline's events.

Tables are Arrow with the schemas below: a batch of a million customers is one table,
not a million objects.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Callable, Sequence


if TYPE_CHECKING:
    import pyarrow as pa

    from loyaltylens_core.kernel.contracts import PipelineResult

EVENTS: tuple[str, ...] = ("viewed", "clicked", "redeemed", "dismissed")

# A flush of at most this many impressions, before pandas is loaded, writes plain rows.
ROWS_PATH_MAX = 100
# (column, type): impressions as handed out.
IMPRESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("impression_id", "string"), ("shown_at", "timestamp"), ("customer_id", "string"),
    ("offer_id", "string"), ("offer_category", "string"), ("tier", "string"), ("channel", "string"),
    ("score", "float64"), ("model_version", "string"), ("prompt_version", "string"),
    ("source", "string"), ("variants", "map"),
)
# Outcomes as reported: one event per row.
OUTCOME_COLUMNS: tuple[tuple[str, str], ...] = (
    ("impression_id", "string"), ("event", "string"), ("rating", "int8"), ("at", "timestamp"),
)
# One row per impression with what happened to it (what reports read).
JOINED_EXTRA: tuple[tuple[str, str], ...] = (
    *((event, "bool") for event in EVENTS), ("rating", "float64"),
)


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {
        "string": pa.string(), "float64": pa.float64(), "int8": pa.int8(), "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"), "map": pa.map_(pa.string(), pa.string()),
    }[kind]


def _schema(columns: Sequence[tuple[str, str]]) -> "pa.Schema":
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(kind)) for name, kind in columns])


def impression_schema() -> "pa.Schema":
    return _schema(IMPRESSION_COLUMNS)


def outcome_schema() -> "pa.Schema":
    return _schema(OUTCOME_COLUMNS)


def joined_schema() -> "pa.Schema":
    return _schema((*IMPRESSION_COLUMNS, *JOINED_EXTRA))


def impression_tuple(result: "PipelineResult", source: str) -> tuple[Any, ...]:
    """One run's impression as a tuple in ``IMPRESSION_COLUMNS`` order (the run offered
    something). Made as the run finishes: a few microseconds spread over requests instead of
    a burst of Python work in the flush that would hold the GIL while requests wait."""
    offer, copy = result.top_offer, result.copy_
    assert offer is not None
    return (result.run_id, result.created_at, result.customer_id, offer.offer_id, offer.category,
            result.features.tier, result.features.channel_preference, result.propensity.score,
            result.propensity.model_version, copy.prompt_version if copy else None, source,
            list(result.experiments.items()))


def table_from_tuples(rows: Sequence[tuple[Any, ...]]) -> "pa.Table":
    """Impression tuples as an Arrow table, column by column."""
    import pyarrow as pa

    schema = impression_schema()
    columns = list(zip(*rows)) if rows else [() for _ in schema]
    return pa.table([pa.array(list(column), f.type) for column, f in zip(columns, schema)], schema=schema)


def from_results(results: Sequence["PipelineResult"], source: str) -> "pa.Table":
    """Impressions of finished runs as an Arrow table."""
    return table_from_tuples([impression_tuple(r, source) for r in results if r.top_offer is not None])


def from_batch(rows: "pa.Table", shown_at: dt.datetime, source: str = "batch", offered_only: bool = True) -> "pa.Table":
    """A batch's merged rows (``batch.schema()``) as impressions, column by column: the
    customers offered something (all of them with ``offered_only=False``: a campaign's
    treated customers count whether or not an offer was left for them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offered = rows.filter(pc.is_valid(rows["top_offer_id"])) if offered_only else rows
    n = offered.num_rows
    columns = {
        "impression_id": offered["impression_id"], "shown_at": pa.repeat(pa.scalar(shown_at, _arrow_type("timestamp")), n),
        "customer_id": offered["customer_id"], "offer_id": offered["top_offer_id"],
        "offer_category": offered["top_offer_category"], "tier": offered["tier"], "channel": offered["channel"],
        "score": offered["score"], "model_version": offered["model_version"],
        "prompt_version": offered["prompt_version"], "source": pa.repeat(pa.scalar(source), n),
        "variants": offered["variants"],
    }
    return pa.table(columns, schema=impression_schema())


def screen_outcomes(
    outcomes: "pa.Table", known: set[str] | None, held: set[tuple[str, str]]
) -> tuple[list[int], int, list[int]]:
    """Which rows of ``outcomes`` a store adds, by the Protocol's rules: (rows to add, how
    many repeat a held or an earlier row's (impression, event), rows naming an impression
    not in ``known``). ``known=None`` skips that check. ``held`` gains the added keys."""
    keep: list[int] = []
    unknown: list[int] = []
    repeats = 0
    for row, key in enumerate(zip(outcomes["impression_id"].to_pylist(), outcomes["event"].to_pylist())):
        if known is not None and key[0] not in known:
            unknown.append(row)
        elif key in held:
            repeats += 1
        else:
            held.add(key)
            keep.append(row)
    return keep, repeats, unknown


def join_outcomes(impressions: "pa.Table", outcomes: "pa.Table") -> "pa.Table":
    """One row per impression (the first of each id) with a flag per event and the mean
    rating: the reference join, used by stores without a query engine of their own."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if impressions.num_rows:
        _, first = np.unique(impressions["impression_id"].to_numpy(zero_copy_only=False), return_index=True)
        impressions = impressions.take(pa.array(np.sort(first)))
    index = {key: i for i, key in enumerate(impressions["impression_id"].to_pylist())}
    flags = {event: np.zeros(impressions.num_rows, dtype=bool) for event in EVENTS}
    rating_sum = np.zeros(impressions.num_rows)
    rating_n = np.zeros(impressions.num_rows)
    seen: set[tuple[str, str]] = set()
    for impression_id, event, rating in zip(
        outcomes["impression_id"].to_pylist(), outcomes["event"].to_pylist(), outcomes["rating"].to_pylist()
    ):
        row = index.get(impression_id)
        if row is None or (impression_id, event) in seen:
            continue
        seen.add((impression_id, event))
        flags[event][row] = True
        if rating is not None:
            rating_sum[row] += rating
            rating_n[row] += 1
    rating = pa.array(np.divide(rating_sum, rating_n, out=np.zeros_like(rating_sum), where=rating_n > 0),
                      mask=rating_n == 0)
    table = impressions
    for event in EVENTS:
        table = table.append_column(event, pa.array(flags[event]))
    table = table.append_column("rating", pc.cast(rating, pa.float64()))
    return table.cast(joined_schema())
