"""The core's part of decisioning, with fake plugins: placements from config, the pool the
decider sees, a second look when caps leave a placement short, the fallback offer, and a
decider held to its contract."""

from __future__ import annotations

import pytest

from loyaltylens_core.kernel.contracts import Decision, Offer, OfferCandidate
from loyaltylens_core.kernel.errors import ConfigError, ContractViolation, UsageError
from loyaltylens_core.sdk.testing import FakeDecider, FakePlugin, FakeRetriever

OFFERS = [Offer(offer_id=f"O{i:02d}", title=f"Offer {i}", description="an offer", category="test",
                min_propensity_threshold=0.0) for i in range(60)]


class DropsFirst(FakeDecider):
    """Refuses the first ``n`` offers it is ever shown, like caps already used up."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.refused = n

    def decide(self, request):
        self.requests.append(request)
        kept, dropped = [], 0
        for c in request.candidates:
            if self.refused > 0:
                self.refused -= 1
                dropped += 1
            else:
                kept.append(c)
        chosen = tuple(OfferCandidate(offer=c.offer, similarity=c.similarity, rank=n)
                       for n, c in enumerate(kept[: request.placement.k], 1))
        return Decision(placement=request.placement.name, chosen=chosen, considered=len(request.candidates),
                        dropped={"capped_customer": dropped} if dropped else {})


def config(tmp_path, text: str) -> str:
    path = tmp_path / "loyaltylens.toml"
    path.write_text(text)
    return str(path)


def test_the_default_placement_shows_top_k_from_a_wider_pool(loyaltylens_pipeline):
    decider = FakeDecider()
    result = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=decider)).run("C001")
    assert [c.offer.offer_id for c in result.candidates] == ["O00", "O01", "O02"]
    assert len(decider.requests[0].candidates) == 12  # max(4 * 3, 10)
    assert result.decision.placement == "default" and result.decision.considered == 12
    assert "decision" in result.latency_ms


def test_a_placement_from_config_is_asked_for_by_name(loyaltylens_pipeline, tmp_path):
    path = config(tmp_path, '[placements.app-banner]\nk = 1\npool = 5\nranking = "propensity * value"\n')
    decider = FakeDecider()
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=decider),
                                    config_path=path)
    result = pipeline.run("C001", placement="app-banner")
    assert len(result.candidates) == 1 and result.decision.placement == "app-banner"
    assert decider.requests[0].placement.ranking == "propensity * value"
    assert len(decider.requests[0].candidates) == 5
    with pytest.raises(UsageError, match="placement 'app-baner' is not configured.*did you mean 'app-banner'"):
        pipeline.run("C001", placement="app-baner")


@pytest.mark.parametrize(("text", "says"), [
    ('[placements.x]\nranking = "propensity *"\n', r"\[placements.x\] ranking: is not a valid expression"),
    ('[placements.x]\nranking = "margin * 2"\n', "names 'margin', which is not known here"),
    ("[placements.x]\nkk = 1\n", r"\[placements.x\] kk: no such key; keys are: k, ranking, fallback_offer, pool"),
    ("[placements.x]\nk = 0\n", r"\[placements.x\] k: Input should be greater than or equal to 1"),
    ('placement = "nowhere"\n', "names placement 'nowhere', which is not configured"),
])
def test_a_bad_placement_fails_when_the_config_loads(loyaltylens_pipeline, tmp_path, text, says):
    with pytest.raises(ConfigError, match=says):
        loyaltylens_pipeline(config_path=config(tmp_path, text))


def test_a_placement_left_short_by_caps_looks_further_down_once(loyaltylens_pipeline):
    decider = DropsFirst(12)  # the whole first pool is capped
    result = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=decider)).run("C001")
    assert [c.offer.offer_id for c in result.candidates] == ["O12", "O13", "O14"]
    assert [c.rank for c in result.candidates] == [1, 2, 3]
    assert [len(r.candidates) for r in decider.requests] == [12, 36]  # the next 36 of a pool of 48, not the first 12
    assert result.decision.dropped == {"capped_customer": 12} and result.decision.considered == 48


class AwaitedDropsFirst(DropsFirst):
    """DropsFirst whose answers come from ``adecide_many`` (AsyncDecider), as a decider
    with its counters in Redis; it is not non-blocking, and says which way it was asked."""

    nonblocking = False

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.awaited = 0

    async def adecide_many(self, requests):
        self.awaited += 1
        return [DropsFirst.decide(self, r) for r in requests]


def test_an_awaited_decider_is_awaited_on_the_loop_with_the_same_second_look(loyaltylens_pipeline):
    import asyncio

    decider = AwaitedDropsFirst(12)
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=decider))
    assert "AsyncDecider" in pipeline.capabilities("decision")
    result = asyncio.run(pipeline.arun("C001", inline=True))
    assert decider.awaited == 2  # the first pool, then the second look, both awaited
    assert [c.offer.offer_id for c in result.candidates] == ["O12", "O13", "O14"]
    assert result.decision.dropped == {"capped_customer": 12} and result.decision.considered == 48
    blocking = DropsFirst(12)
    same = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=blocking)).run("C001")
    assert [c.offer.offer_id for c in same.candidates] == [c.offer.offer_id for c in result.candidates]
    assert same.decision == result.decision and set(result.latency_ms) == set(same.latency_ms)


def test_an_awaited_decider_is_held_to_its_contract(loyaltylens_pipeline):
    import asyncio

    class AnswersTwice(AwaitedDropsFirst):
        async def adecide_many(self, requests):
            return [DropsFirst.decide(self, r) for r in requests] * 2

    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=AnswersTwice(0)))
    with pytest.raises(ContractViolation, match="returned 2 decisions for 1 requests"):
        asyncio.run(pipeline.arun("C001", inline=True))


def test_batch_rows_get_the_same_second_look(loyaltylens_pipeline):
    decider = DropsFirst(12)
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS), decision=decider))
    (row,) = pipeline.run_chunk(["C001"])
    assert row["candidate_offer_ids"] == ["O12", "O13", "O14"] and row["placement"] == "default"
    assert row["dropped"] == [("capped_customer", 12)]


def test_an_empty_placement_gets_its_fallback_offer(loyaltylens_pipeline, tmp_path):
    class HoldsAll(FakeDecider):
        def decide(self, request):
            return Decision(placement=request.placement.name, chosen=(), considered=len(request.candidates),
                            dropped={"capped_total": len(request.candidates)})

    class LooksUp(FakeRetriever):
        def offers_by_id(self, ids):
            return {o.offer_id: o for o in self.offers if o.offer_id in ids}

    path = config(tmp_path, '[placements.hero]\nk = 1\nfallback_offer = "O59"\n\n[placements.broken]\nk = 1\n'
                            'fallback_offer = "NOPE"\n')
    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=LooksUp(OFFERS), decision=HoldsAll()), config_path=path)
    result = pipeline.run("C001", placement="hero")
    assert result.top_offer.offer_id == "O59" and result.copy_ is not None
    assert "decision:fallback_offer" in result.fallbacks and result.decision.fallback == "fallback_offer"
    empty = pipeline.run("C001")  # no fallback offer: no offer, said so
    assert empty.top_offer is None and "no_offer" in empty.fallbacks
    with pytest.raises(ConfigError, match="fallback_offer 'NOPE' is not in the catalogue"):
        pipeline.run("C001", placement="broken")


def test_a_fallback_offer_needs_a_retriever_that_can_look_offers_up(loyaltylens_pipeline, tmp_path):
    class HoldsAll(FakeDecider):
        def decide(self, request):
            return Decision(placement=request.placement.name, chosen=())

    path = config(tmp_path, '[placements.hero]\nfallback_offer = "O01"\n')
    pipeline = loyaltylens_pipeline(fake=FakePlugin(decision=HoldsAll()), config_path=path)
    with pytest.raises(ConfigError, match="cannot look offers up by id"):
        pipeline.run("C001", placement="hero")


@pytest.mark.parametrize(("chosen", "says"), [
    (lambda r: r.candidates[:4], "chose 4 offers for placement 'default', which shows 3"),
    (lambda r: (OfferCandidate(offer=OFFERS[59], similarity=0.1, rank=1),), "chose offer 'O59', which was not among"),
])
def test_a_decider_is_held_to_its_contract(loyaltylens_pipeline, chosen, says):
    class Cheats(FakeDecider):
        def decide(self, request):
            return Decision(placement=request.placement.name, chosen=tuple(chosen(request)))

    pipeline = loyaltylens_pipeline(fake=FakePlugin(retriever=FakeRetriever(OFFERS[:20]), decision=Cheats()))
    with pytest.raises(ContractViolation, match=says):
        pipeline.run("C001")
