"""The rules decider: the order every decisioning system uses.

placement -> validity -> threshold -> eligibility rule -> ranking -> caps (counted as taken)
-> the first ``k``. Everything up to ranking is pure and per offer; only capped offers go
to the counter store, one atomic reservation per customer (one transaction per chunk in a
batch), so a run whose best offers carry no cap never touches it.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Sequence

from loyaltylens_core.kernel.contracts import (
    ELIGIBILITY_NAMES,
    RANKING_NAMES,
    Decision,
    DecisionRequest,
    Offer,
    OfferCandidate,
    feature_values,
)
from loyaltylens_core.kernel.expressions import parse

from .counters import CAPPED_FREQUENCY, NOT_REACHED, OK, Ask, CounterStore, Item, StoreDown

STORE_UNAVAILABLE = "counter_store_unavailable"


def ranking_key(ranking: str, score: float) -> Callable[[OfferCandidate], tuple[Any, ...]]:
    """Sort key, best first; ties go to the closer match, then the lower offer_id, so the
    same inputs always give the same order."""
    if ranking == "similarity":
        return lambda c: (-c.similarity, c.offer.offer_id)
    if ranking == "priority":
        return lambda c: (-c.offer.priority, -c.similarity, c.offer.offer_id)
    formula = parse(ranking, RANKING_NAMES, "number").evaluate

    def key(c: OfferCandidate) -> tuple[Any, ...]:
        try:
            value = float(formula({"propensity": score, "similarity": c.similarity, "value": c.offer.value,
                                   "priority": float(c.offer.priority)}))
        except (ZeroDivisionError, OverflowError, ValueError):
            value = -math.inf
        return (-value if math.isfinite(value) else math.inf, -c.similarity, c.offer.offer_id)

    return key


def item_of(offer: Offer) -> Item:
    cap = offer.cap_per_customer
    return Item(offer.offer_id, per_count=cap.count if cap else 0, per_window_s=cap.days * 86400.0 if cap else 0.0,
                cap_total=offer.cap_total or 0, stock=-1 if offer.stock is None else offer.stock)


# A request, its offers this customer may get here and now (ranked), and what was dropped.
Screened = tuple[DecisionRequest, list[OfferCandidate], "collections.Counter[str]"]


class RulesDecider:
    """``decide``/``decide_many`` over a counter store; see the module docstring."""

    def __init__(self, store: CounterStore, *, on_store_error: str = "closed", nonblocking: bool = False,
                 enforce_caps: bool = True) -> None:
        self.store = store
        self.enforce_caps = enforce_caps
        self.caps_frequency = enforce_caps  # campaign frequency rules are caps too
        self.previews = True  # placement.preview: the store's reservation is not kept
        self.on_store_error = on_store_error
        # The embedded store answers in well under a millisecond; a Redis one waits on the network.
        self.nonblocking = nonblocking
        # Compiled rules by text: a catalogue repeats a handful of rules over many offers.
        self._rules: dict[str, Callable[[dict[str, Any]], Any]] = {}

    def _rule(self, text: str) -> Callable[[dict[str, Any]], Any]:
        rule = self._rules.get(text)
        if rule is None:
            rule = self._rules[text] = parse(text, ELIGIBILITY_NAMES, "bool").evaluate
        return rule

    def decide(self, request: DecisionRequest) -> Decision:
        return self.decide_many([request])[0]

    def decide_many(self, requests: Sequence[DecisionRequest]) -> list[Decision]:
        screened, asks = self._plan(requests)
        verdicts: list[list[str]] | None = []
        if asks:
            try:
                verdicts = self.store.reserve_many([a for _, a in asks], self._commits(requests))
            except StoreDown:
                verdicts = None
        return self._decided(screened, asks, verdicts)

    async def adecide_many(self, requests: Sequence[DecisionRequest]) -> list[Decision]:
        """``decide_many`` awaiting the counter store (AsyncDecider): a Redis store answers on
        the service's event loop instead of in a worker thread."""
        screened, asks = self._plan(requests)
        verdicts: list[list[str]] | None = []
        if asks:
            try:
                verdicts = await self.store.areserve_many([a for _, a in asks], self._commits(requests))
            except StoreDown:
                verdicts = None
        return self._decided(screened, asks, verdicts)

    def _plan(self, requests: Sequence[DecisionRequest]) -> tuple[list[Screened], list[tuple[int, Ask]]]:
        """Each request screened and ranked, and the walks the counter store must take
        (customers whose reachable offers include a capped one, or a frequency rule)."""
        screened = [self._screen(r) for r in requests]
        asks: list[tuple[int, Ask]] = []
        for i, (request, ranked, _) in enumerate(screened):
            reach = ranked[: self._needed(request, ranked)]
            rule = request.placement.frequency
            if self.enforce_caps and (rule is not None or any(c.offer.is_capped for c in reach)):
                frequency = (rule.group, rule.days * 86400.0, rule.run) if rule is not None else None
                asks.append((i, Ask(request.features.customer_id, request.now.timestamp(),
                                    tuple(item_of(c.offer) for c in reach), request.placement.k, frequency)))
        return screened, asks

    @staticmethod
    def _commits(requests: Sequence[DecisionRequest]) -> bool:
        return not any(r.placement.preview for r in requests)

    def _decided(self, screened: list[Screened], asks: list[tuple[int, Ask]],
                 verdicts: list[list[str]] | None) -> list[Decision]:
        """The decisions, from the store's verdicts on the walks (None: the store was down)."""
        by_request = dict(zip((i for i, _ in asks), verdicts)) if verdicts is not None else {}
        fallback = STORE_UNAVAILABLE if verdicts is None else None
        asked = {i for i, _ in asks}
        return [self._decision(request, ranked, dropped, by_request.get(i), fallback if i in asked else None)
                for i, (request, ranked, dropped) in enumerate(screened)]

    @staticmethod
    def _needed(request: DecisionRequest, ranked: list[OfferCandidate]) -> int:
        """How far down the ranking a walk can go: to the k-th uncapped offer at most."""
        uncapped = 0
        for n, c in enumerate(ranked, 1):
            if not c.offer.is_capped:
                uncapped += 1
                if uncapped >= request.placement.k:
                    return n
        return len(ranked)

    def _screen(self, request: DecisionRequest) -> Screened:
        """The offers this customer may get here and now, ranked; what was dropped, by reason."""
        dropped: collections.Counter[str] = collections.Counter()
        placement = request.placement.name
        now = request.now
        score = request.propensity.score
        values: dict[str, Any] | None = None
        kept: list[OfferCandidate] = []
        for c in request.candidates:
            offer = c.offer
            if offer.placements is not None and placement not in offer.placements:
                dropped["wrong_placement"] += 1
            elif offer.valid_from is not None and now < offer.valid_from:
                dropped["not_yet_valid"] += 1
            elif offer.valid_to is not None and now > offer.valid_to:
                dropped["expired"] += 1
            elif request.enforce_threshold and offer.min_propensity_threshold > score:
                dropped["below_threshold"] += 1
            else:
                if offer.eligibility is not None:
                    if values is None:
                        values = self._values(request)
                    if not self._rule(offer.eligibility)(values):
                        dropped["ineligible"] += 1
                        continue
                kept.append(c)
        kept.sort(key=ranking_key(request.placement.ranking, score))
        return request, kept, dropped

    @staticmethod
    def _values(request: DecisionRequest) -> dict[str, Any]:
        values = feature_values(request.features)
        values["propensity"] = request.propensity.score
        values["placement"] = request.placement.name
        return values

    def _decision(
        self, request: DecisionRequest, ranked: list[OfferCandidate], dropped: collections.Counter[str],
        verdict: list[str] | None, fallback: str | None,
    ) -> Decision:
        k = request.placement.k
        chosen: list[OfferCandidate] = []
        if verdict is None:  # nothing capped was reached, or the store is down
            counted = request.placement.frequency is not None  # a frequency rule counts every offer
            for c in ranked:
                if len(chosen) >= k:
                    break
                if fallback is not None and (counted or c.offer.is_capped) and self.on_store_error == "closed":
                    dropped["counter_store_down"] += 1
                    continue
                chosen.append(c)
        elif verdict and verdict[0] == CAPPED_FREQUENCY:  # the customer had the campaign group: nothing here
            dropped[CAPPED_FREQUENCY] += len(ranked)
        else:
            for c, reason in zip(ranked, verdict):
                if reason == OK:
                    chosen.append(c)
                elif reason != NOT_REACHED:
                    dropped[reason] += 1
        return Decision.model_construct(
            placement=request.placement.name,
            chosen=tuple(OfferCandidate.model_construct(offer=c.offer, similarity=c.similarity, rank=n)
                         for n, c in enumerate(chosen, 1)),
            dropped=dict(dropped), considered=len(request.candidates), ranking=request.placement.ranking,
            fallback=fallback,
        )

    def close(self) -> None:
        self.store.close()
