"""The decision step between retrieval and copy, the same for ``run``, ``serve`` and ``batch``.

The retriever finds a pool of offers that fit the customer; the ``decision`` stage keeps the
ones this customer may get here and now (eligibility, validity, caps), ranks them for the
placement and counts what it hands out. This module asks it, holds its answer to the
contract, and applies what is the core's job whatever decider is selected: the placement's
fallback offer when nothing is left, and the result's ``fallbacks`` notes.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Generator, Sequence

from loyaltylens_core.kernel.batched import call_many, one_each
from loyaltylens_core.kernel.components import Components
from loyaltylens_core.kernel.contracts import (
    CustomerFeatures,
    Decision,
    DecisionRequest,
    OfferCandidate,
    Placement,
    PropensityScore,
)
from loyaltylens_core.kernel.errors import ConfigError, ContractViolation

FALLBACK_OFFER = "fallback_offer"
MAX_POOL = 200  # RetrievalQuery.k's limit


def request(
    features: CustomerFeatures, propensity: PropensityScore, candidates: Sequence[OfferCandidate],
    placement: Placement, now: dt.datetime, enforce_threshold: bool = True,
) -> DecisionRequest:
    """Every part is a contract already checked: built without validating them again."""
    return DecisionRequest.model_construct(
        features=features, propensity=propensity, candidates=tuple(candidates), placement=placement, now=now,
        enforce_threshold=enforce_threshold,
    )


Steps = Generator[list[DecisionRequest], list[object], list[Decision]]


def decide(
    parts: Components, asked: Sequence[DecisionRequest],
    wider: Callable[[list[int], int], list[list[OfferCandidate]]], fallbacks: Sequence[list[str]],
) -> list[Decision]:
    """The whole decision step for many customers (one for ``run``): the decider's answers,
    a second look for placements left short, fallback offers, and the notes in each
    customer's ``fallbacks``."""
    steps = _steps(parts, asked, wider, fallbacks)
    try:
        batch = next(steps)
        while True:
            with parts.calling("decision"):
                out = call_many(parts, "decision", "BatchDecider", "decide_many", "decide", batch, "decisions", "requests")
            batch = steps.send(out)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adecide(
    parts: Components, asked: Sequence[DecisionRequest],
    wider: Callable[[list[int], int], list[list[OfferCandidate]]], fallbacks: Sequence[list[str]],
) -> list[Decision]:
    """``decide`` with the decider's ``adecide_many`` awaited (``AsyncDecider``: counters in
    a network store, such as Redis), so the service decides on its event loop, without a
    thread per request. The same steps, checks and answers as ``decide``."""
    steps = _steps(parts, asked, wider, fallbacks)
    decider = parts.component("decision")
    try:
        batch = next(steps)
        while True:
            with parts.calling("decision"):
                out = one_each(parts, "decision", await decider.adecide_many(batch), batch, "decisions", "requests")
            batch = steps.send(out)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _steps(
    parts: Components, asked: Sequence[DecisionRequest],
    wider: Callable[[list[int], int], list[list[OfferCandidate]]], fallbacks: Sequence[list[str]],
) -> Steps:
    """The decision step as a generator: it yields each batch of requests the decider must
    answer and is sent the answers, so one definition serves a blocking and an awaited
    decider."""
    decisions = yield from _decided(parts, asked)
    decisions = yield from _refilled(parts, asked, decisions, wider)
    out = []
    for request, decision, notes in zip(asked, decisions, fallbacks):
        decision = with_fallback_offer(parts, decision, request.placement)
        note(decision, notes)
        out.append(decision)
    return out


def _decided(parts: Components, requests: Sequence[DecisionRequest]) -> Steps:
    """Ask the decider once for ``requests`` (yielded) and hold its answers to the contract.
    Offers outside a placement's collection never reach the decider."""
    if not requests:
        return []
    if requests[0].placement.frequency is not None:  # a batch shares one placement
        _needs_frequency_caps(parts, requests[0].placement.name, requests[0].placement.frequency.group)
    if requests[0].placement.preview and not _says(parts, "PreviewsDecisions", "previews"):
        raise ConfigError(
            f"decision plugin {parts.implementation('decision').name!r} cannot decide without counting, so a dry "
            "run would use up caps", "drop --dry-run, or select a decider that previews (rules)",
        )
    narrowed = [narrow(r) for r in requests]
    asked = [r for r, _ in narrowed]
    out = yield asked
    decisions = [_checked(parts, r, d) for r, d in zip(asked, out)]
    return [_outside(d, n) if n else d for d, (_, n) in zip(decisions, narrowed)]


def narrow(request: DecisionRequest) -> tuple[DecisionRequest, int]:
    """The request with only the offers of its placement's collection, and how many left."""
    placement = request.placement
    if placement.offer_ids is None and placement.categories is None:
        return request, 0
    kept = tuple(c for c in request.candidates if placement.holds(c.offer))
    left = len(request.candidates) - len(kept)
    return (request.model_copy(update={"candidates": kept}) if left else request), left


def _outside(decision: Decision, left: int) -> Decision:
    dropped = {**decision.dropped, "not_in_collection": decision.dropped.get("not_in_collection", 0) + left}
    return decision.model_copy(update={"dropped": dropped, "considered": decision.considered + left})


def _says(parts: Components, capability: str, flag: str) -> bool:
    """Whether the decider declares ``capability`` and its flag is on (built first: its
    capabilities are known once it is)."""
    decider = parts.component("decision")
    return parts.has("decision", capability) and bool(getattr(decider, flag))


def _needs_frequency_caps(parts: Components, placement: str, group: str) -> None:
    """A frequency rule the decider would ignore is a misconfiguration, never a silent no-op."""
    if not _says(parts, "CapsFrequency", "caps_frequency"):
        raise ConfigError(
            f"placement {placement!r} has a frequency rule (group {group!r}), but decision "
            f"plugin {parts.implementation('decision').name!r} does not keep frequency caps",
            "select a decider that does (rules, with enforce_caps = true) or drop the campaign's frequency rule",
        )


def _checked(parts: Components, asked: DecisionRequest, answer: object) -> Decision:
    decision = parts.expect("decision", answer, Decision)
    if len(decision.chosen) > asked.placement.k:
        raise ContractViolation(
            f"decision plugin {parts.implementation('decision').name!r} chose {len(decision.chosen)} offers "
            f"for placement {asked.placement.name!r}, which shows {asked.placement.k}",
            "fix the plugin",
        )
    offered = {c.offer.offer_id for c in asked.candidates}
    strays = [c.offer.offer_id for c in decision.chosen if c.offer.offer_id not in offered]
    if strays:
        raise ContractViolation(
            f"decision plugin {parts.implementation('decision').name!r} chose offer {strays[0]!r}, "
            "which was not among the retrieved candidates",
            "choose from request.candidates",
        )
    return decision


def with_fallback_offer(parts: Components, decision: Decision, placement: Placement) -> Decision:
    """A placement that must never be empty is filled with its ``fallback_offer`` (not
    subject to rules or caps, as in every decisioning system)."""
    if decision.chosen or not placement.fallback_offer:
        return decision
    if not parts.has("retriever", "LooksUpOffers"):
        raise ConfigError(
            f"placement {placement.name!r} has a fallback_offer, but retriever "
            f"{parts.implementation('retriever').name!r} cannot look offers up by id",
            "remove fallback_offer or select a retriever with offers_by_id",
        )
    found = parts.component("retriever").offers_by_id([placement.fallback_offer])
    offer = found.get(placement.fallback_offer) if isinstance(found, dict) else None
    if offer is None:
        raise ConfigError(
            f"placement {placement.name!r}: fallback_offer {placement.fallback_offer!r} is not in the catalogue",
            "name an offer_id from the catalogue",
        )
    candidate = OfferCandidate.model_construct(offer=offer, similarity=0.0, rank=1)
    return decision.model_copy(update={"chosen": (candidate,), "fallback": decision.fallback or FALLBACK_OFFER})


def note(decision: Decision, fallbacks: list[str]) -> None:
    """What the decision fell back on, in the result's ``fallbacks`` (``decision:<why>``)."""
    if decision.fallback:
        fallbacks.append(f"decision:{decision.fallback}")


def _refilled(
    parts: Components, asked: Sequence[DecisionRequest], decisions: list[Decision],
    wider: Callable[[list[int], int], list[list[OfferCandidate]]],
) -> Steps:
    """Placements left short although the pool was full (caps and rules took too many of
    the best matches) are decided again once, over the next offers of a pool four times
    larger: a customer whose favourite offers are capped still gets the next best.
    ``wider(positions, k)`` retrieves those customers' pools of ``k``."""
    short = [i for i, (a, d) in enumerate(zip(asked, decisions))
             if len(d.chosen) < a.placement.k and a.placement.pool_size <= len(a.candidates) < MAX_POOL]
    if not short:
        return decisions
    size = min(MAX_POOL, 4 * max(len(asked[i].candidates) for i in short))
    pools = wider(short, size)
    again: list[tuple[int, DecisionRequest]] = []
    for i, pool in zip(short, pools):
        seen = {c.offer.offer_id for c in asked[i].candidates}
        fresh = tuple(c for c in pool if c.offer.offer_id not in seen)
        if fresh:
            placement = asked[i].placement.model_copy(update={"k": asked[i].placement.k - len(decisions[i].chosen)})
            again.append((i, asked[i].model_copy(update={"candidates": fresh, "placement": placement})))
    out = list(decisions)
    extras = yield from _decided(parts, [r for _, r in again])
    for (i, _), extra in zip(again, extras):
        out[i] = _merged(decisions[i], extra)
    return out


def _merged(first: Decision, extra: Decision) -> Decision:
    chosen = [*first.chosen, *extra.chosen]
    dropped = dict(first.dropped)
    for reason, n in extra.dropped.items():
        dropped[reason] = dropped.get(reason, 0) + n
    return first.model_copy(update={
        "chosen": tuple(OfferCandidate.model_construct(offer=c.offer, similarity=c.similarity, rank=n)
                        for n, c in enumerate(chosen, 1)),
        "dropped": dropped, "considered": first.considered + extra.considered,
        "fallback": first.fallback or extra.fallback,
    })
