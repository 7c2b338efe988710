"""``loyaltylens batch`` rows: one flat row per customer, and the column list behind both
the rows and the parquet schema."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from loyaltylens_core.kernel.contracts import (
    CustomerFeatures,
    Decision,
    GeneratedCopy,
    OfferCandidate,
    PropensityScore,
)

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_COLUMNS: tuple[tuple[str, str], ...] = (
    # (column, arrow type): the one list behind batch rows and the parquet schema.
    # impression_id is filled when a part is written (batch.BatchJob.write_part): it names
    # the batch, which a worker computing rows does not know.
    ("impression_id", "string"), ("customer_id", "string"), ("tier", "string"), ("channel", "string"), ("score", "float64"), ("label", "int8"), ("model_version", "string"),
    ("top_offer_id", "string"), ("top_offer_title", "string"), ("top_offer_category", "string"),
    ("similarity", "float64"), ("candidate_offer_ids", "list<string>"), ("headline", "string"),
    ("body", "string"), ("cta", "string"), ("prompt_version", "string"), ("fallbacks", "list<string>"),
    ("variants", "map<string,string>"), ("placement", "string"), ("dropped", "map<string,int64>"),
)


def batch_row(
    features: CustomerFeatures, score: PropensityScore, candidates: Sequence[OfferCandidate],
    fallbacks: Sequence[str], copy: GeneratedCopy | None, prompt_version: str | None,
    variants: dict[str, str] | None = None, decision: Decision | None = None,
) -> dict[str, Any]:
    """One customer's flat row in ``loyaltylens batch`` output (columns: BATCH_COLUMNS)."""
    top = candidates[0] if candidates else None
    return {
        "impression_id": None,
        "customer_id": features.customer_id,
        "tier": features.tier,
        "channel": features.channel_preference,
        "score": score.score,
        "label": score.label,
        "model_version": score.model_version,
        "top_offer_id": top.offer.offer_id if top else None,
        "top_offer_title": top.offer.title if top else None,
        "top_offer_category": top.offer.category if top else None,
        "similarity": top.similarity if top else None,
        "candidate_offer_ids": [c.offer.offer_id for c in candidates],
        "headline": copy.headline if copy else None,
        "body": copy.body if copy else None,
        "cta": copy.cta if copy else None,
        "prompt_version": copy.prompt_version if copy else prompt_version,
        "fallbacks": list(fallbacks),
        "variants": list((variants or {}).items()),
        "placement": decision.placement if decision else None,
        "dropped": list(decision.dropped.items()) if decision else [],
    }


@dataclasses.dataclass
class Many:
    """Many customers through the stages after the feature store, aligned by position."""

    features: list[CustomerFeatures]
    scores: list[PropensityScore]
    candidates: list[list[OfferCandidate]]
    fallbacks: list[list[str]]
    copies: list[GeneratedCopy | None]
    timing: dict[str, float]
    decisions: list[Decision]

    def rows(self) -> Iterator[tuple[Any, ...]]:
        return iter(zip(self.features, self.scores, self.candidates, self.fallbacks, self.copies))


def schema() -> "pa.Schema":
    """The Arrow schema of batch rows (``BATCH_COLUMNS``): parts, merged results, engines."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "int8": pa.int8(), "list<string>": pa.list_(pa.string()),
             "map<string,string>": pa.map_(pa.string(), pa.string()),
             "map<string,int64>": pa.map_(pa.string(), pa.int64())}
    return pa.schema([(name, types[kind]) for name, kind in BATCH_COLUMNS])
