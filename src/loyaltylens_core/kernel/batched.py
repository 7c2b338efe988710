"""Each stage for many customers at once: the batched stage method where the component
declares one (``BatchFeatureStore``, ``BatchPropensityModel``, ``BatchRetriever``,
``BatchGenerator``), a loop over the single-customer method where it does not, and every
output held to its contract. ``Pipeline.run_many``, batch chunks and engines' workers all
go through these, so a plugin is batched the same way whoever calls it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from loyaltylens_core.kernel import adapters
from loyaltylens_core.kernel.components import Components
from loyaltylens_core.kernel.contracts import (
    CustomerFeatures,
    GeneratedCopy,
    OfferCandidate,
    PropensityScore,
    RetrievalQuery,
)
from loyaltylens_core.kernel.errors import ContractViolation, CustomerNotFound, LoyaltyLensError

FALLBACK_NO_OFFER = "no_offer"


def read_many(parts: Components, customer_ids: Sequence[str], as_of: dt.date | None = None) -> list[CustomerFeatures]:
    store = parts.component("feature_store")
    if parts.has("feature_store", "BatchFeatureStore"):
        out = store.read_many(customer_ids, as_of)
    else:
        out = [store.read_latest(c, as_of) for c in customer_ids]
    return parts.expect_list("feature_store", out, CustomerFeatures)


def read_known(
    parts: Components, customer_ids: Sequence[str], as_of: dt.date | None = None
) -> tuple[list[CustomerFeatures], dict[str, LoyaltyLensError]]:
    """Features for the ids the store knows (in order), and the error for each it does not.

    One batched read when every id is known; only when the store reports an unknown
    customer are the ids read one by one to find which (a batch over millions must not
    die for one unknown customer, nor pay per-id reads when there is none)."""
    try:
        return read_many(parts, customer_ids, as_of), {}
    except CustomerNotFound:
        pass
    store = parts.component("feature_store")
    features: list[CustomerFeatures] = []
    unknown: dict[str, LoyaltyLensError] = {}
    for customer_id in customer_ids:
        try:
            features.append(parts.expect("feature_store", store.read_latest(customer_id, as_of), CustomerFeatures))
        except CustomerNotFound as exc:
            unknown[customer_id] = exc
    return features, unknown


def predict_many(parts: Components, features: Sequence[CustomerFeatures]) -> list[PropensityScore]:
    model = parts.component("propensity")
    if parts.has("propensity", "BatchPropensityModel"):
        out = model.predict_many(features)
    else:
        out = [model.predict(f) for f in features]
    return parts.expect_list("propensity", out, PropensityScore)


def call_many(
    parts: Components, stage: str, capability: str, many: str, one: str, inputs: Sequence[Any],
    answers: str, asked: str,
) -> list[Any]:
    """The stage's batched method ``many`` where its component declares ``capability``, else
    ``one`` in a loop; either way exactly one answer per input, or a contract violation
    naming the plugin ("returned 2 results for 3 queries")."""
    component = parts.component(stage)
    if parts.has(stage, capability):
        out = getattr(component, many)(inputs)
    else:
        out = [getattr(component, one)(i) for i in inputs]
    return one_each(parts, stage, out, inputs, answers, asked)


def one_each(parts: Components, stage: str, out: object, inputs: Sequence[Any], answers: str, asked: str) -> list[Any]:
    """``out`` if it is a list with one answer per input, else a contract violation."""
    if not isinstance(out, list) or len(out) != len(inputs):
        raise ContractViolation(
            f"{stage} plugin {parts.implementation(stage).name!r} returned "
            f"{len(out) if isinstance(out, list) else type(out).__name__} {answers} for {len(inputs)} {asked}",
            "fix the plugin",
        )
    return out


def retrieve_many(parts: Components, queries: Sequence[RetrievalQuery]) -> list[list[OfferCandidate]]:
    out = call_many(parts, "retriever", "BatchRetriever", "retrieve_many", "retrieve", queries, "results", "queries")
    seen: dict[int, OfferCandidate] = {}  # contracts are frozen: one checked copy may be shared
    return [parts.expect_list("retriever", cands, OfferCandidate, seen) for cands in out]


def checked_copy(parts: Components, produced: object, fallbacks: list[str]) -> GeneratedCopy:
    copy = parts.expect("generator", produced, GeneratedCopy)
    if copy.fallback:
        fallbacks.append(f"generator:{copy.fallback}")
    return copy


def generate_one(
    parts: Components, features: CustomerFeatures, propensity: PropensityScore,
    candidates: Sequence[OfferCandidate], fallbacks: list[str],
) -> GeneratedCopy | None:
    if not candidates:
        fallbacks.append(FALLBACK_NO_OFFER)
        return None
    variables = adapters.template_variables(features, propensity, candidates[0].offer)
    with parts.calling("generator"):
        return checked_copy(parts, parts.component("generator").generate(variables), fallbacks)


def generate_many(
    parts: Components,
    features: Sequence[CustomerFeatures],
    scores: Sequence[PropensityScore],
    candidates: Sequence[Sequence[OfferCandidate]],
    fallbacks: list[list[str]],
) -> list[GeneratedCopy | None]:
    """Copy for every customer with an offer: one batched call when the generator has
    ``generate_many`` (an LLM generator runs them concurrently), else a loop."""
    if not parts.has("generator", "BatchGenerator"):
        return [generate_one(parts, f, p, c, n) for f, p, c, n in zip(features, scores, candidates, fallbacks)]
    wanted = [i for i, c in enumerate(candidates) if c]
    variables = [adapters.template_variables(features[i], scores[i], candidates[i][0].offer) for i in wanted]
    produced = parts.expect_list("generator", parts.component("generator").generate_many(variables), GeneratedCopy)
    if len(produced) != len(wanted):
        raise ContractViolation(
            f"generator plugin {parts.implementation('generator').name!r} returned {len(produced)} "
            f"copies for {len(wanted)} inputs",
            "fix the plugin",
        )
    copies: list[GeneratedCopy | None] = [None] * len(features)
    for i, copy in zip(wanted, produced):
        copies[i] = copy
        if copy.fallback:
            fallbacks[i].append(f"generator:{copy.fallback}")
    for i, c in enumerate(candidates):
        if not c:
            fallbacks[i].append(FALLBACK_NO_OFFER)
    return copies
