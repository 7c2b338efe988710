"""Segment models (``segment_by``): real training per tier, routing, and per-segment versions."""

from __future__ import annotations

import datetime as dt
import json
import math
import random

import pytest

from loyaltylens_core.kernel.contracts import TrainingSet
from loyaltylens_core.sdk.testing import make_context, make_features
from loyaltylens_propensity_torch import TorchPropensitySettings, build

TIER_CUSTOMERS = {"bronze": 800, "silver": 600, "gold": 500, "platinum": 100}


class TieredStore:
    """Two snapshots per customer; the label follows a different feature in each tier
    (bronze: the redemption rate, gold: recency), with the true probability known."""

    def __init__(self) -> None:
        rng = random.Random(1)
        feats, labels, truth = [], [], []
        i = 0
        for tier, count in TIER_CUSTOMERS.items():
            for _ in range(count):
                i += 1
                for as_of in (dt.date(2026, 5, 1), dt.date(2026, 6, 1)):
                    rate, recency = rng.random(), rng.uniform(0, 120)
                    f = make_features(f"C{i:05d}", tier=tier, offer_redemption_rate=rate, recency_days=recency,
                                      engagement_score=rng.random(), as_of=as_of)
                    logit = (4 * rate - 2) if tier in ("bronze", "silver") else (2 - recency / 30)
                    p = 1 / (1 + math.exp(-logit))
                    feats.append(f)
                    labels.append(int(rng.random() < p))
                    truth.append(p)
        self.data = TrainingSet(features=tuple(feats), labels=tuple(labels), horizon_days=30, data_hash="tiers",
                                truth=tuple(truth))

    def training_examples(self, horizon_days: int = 30) -> TrainingSet:
        return self.data


STORE = TieredStore()


def model_for(model_dir, **settings):
    context = make_context(model_dir, "propensity", "torch", components={"feature_store": STORE})
    return build(TorchPropensitySettings(**{"epochs": 4, "segment_by": "tier", "min_segment_size": 300,
                                            "segment_must_beat_global": False, **settings}), context)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    directory = tmp_path_factory.mktemp("segmented")
    model = model_for(directory)
    card = model.train()
    return directory, model, card


def test_train_fits_a_model_per_large_segment_and_leaves_small_ones_to_the_global_model(segmented):
    _, model, card = segmented
    rows = {row["segment"]: row for row in card["segments"]}
    assert list(rows) == ["tier=bronze", "tier=silver", "tier=gold", "tier=platinum"]
    assert rows["tier=platinum"]["model_version"] is None and rows["tier=platinum"]["scored_by"] == "global"
    assert "200 examples < min_segment_size 300" in rows["tier=platinum"]["reason"]
    for name in ("tier=bronze", "tier=silver", "tier=gold"):
        row = rows[name]
        assert row["model_version"] == "propensity_v1" and row["role"] == "champion"
        assert row["examples"] == 2 * TIER_CUSTOMERS[name.split("=")[1]]
        # Beside the oracle and the global model, on the same held-out rows.
        assert 0.5 < row["auc"] <= row["oracle_auc"] + 0.05 and row["global_auc"] is not None
        segment_card = json.loads((model.model_dir / "segments" / name / "propensity_v1" / "card.json").read_text())
        assert segment_card["segment"] == name and segment_card["segment_by"] == "tier"
        assert segment_card["global_model"]["model_version"] == "propensity_v1"
        assert segment_card["global_model"]["metrics"]["window"] == segment_card["evaluation"]["headline"]
        assert segment_card["split"]["test_latest"] == TIER_CUSTOMERS[name.split("=")[1]]
    assert sorted(model.segment_stores()) == ["tier=bronze", "tier=gold", "tier=silver"]
    assert rows["tier=gold"]["scored_by"] == "tier=gold/propensity_v1"


def test_by_default_a_segment_model_serves_only_where_it_beats_the_global_model(segmented):
    directory, model, card = segmented
    gated = model_for(directory, segment_must_beat_global=True)
    gated.prepare()
    # Each tier's label follows its own feature: the segment models rank their tiers better.
    assert sorted(gated.segment_models) == ["bronze", "gold", "silver"]
    for row in card["segments"][:3]:
        value = row["segment"].split("=")[1]
        wins = row["auc"] > row["global_auc"]
        assert row["beats_global"] == wins
        assert (value in gated.segment_models) == wins
        expected = f"{row['segment']}/propensity_v1" if wins else "propensity_v1"
        assert gated.predict(make_features("X", tier=value)).model_version == expected


def test_each_customer_is_scored_by_its_segments_model(segmented):
    _, model, _ = segmented
    gold = make_features("G1", tier="gold", recency_days=5, offer_redemption_rate=0.1)
    platinum = make_features("P1", tier="platinum", recency_days=5, offer_redemption_rate=0.1)
    scored = model.predict(gold)
    assert (scored.segment, scored.model_version) == ("tier=gold", "tier=gold/propensity_v1")
    assert scored.score == pytest.approx(float(model.segment_models["gold"].own_scores([gold])[0]))
    assert scored.score != pytest.approx(float(model.own_scores([gold])[0]), abs=1e-4)
    fallback = model.predict(platinum)
    assert (fallback.segment, fallback.model_version) == (None, "propensity_v1")
    assert fallback.score == pytest.approx(float(model.own_scores([platinum])[0]))
    # A batch routes the same way, customer by customer, in order.
    mixed = [make_features(f"M{i}", tier=tier, recency_days=10 * i, offer_redemption_rate=i / 12)
             for i, tier in enumerate(["gold", "bronze", "platinum", "silver"] * 3)]
    many = model.predict_many(mixed)
    one = [model.predict(f) for f in mixed]
    assert [(p.customer_id, p.model_version, p.segment) for p in many] == \
        [(p.customer_id, p.model_version, p.segment) for p in one]
    assert [p.score for p in many] == pytest.approx([p.score for p in one], abs=1e-6)


def test_a_new_process_loads_the_segment_champions(segmented):
    directory, _, _ = segmented
    again = model_for(directory)
    again.prepare()
    assert sorted(again.segment_models) == ["bronze", "gold", "silver"]
    assert again.predict(make_features("S1", tier="silver")).model_version == "tier=silver/propensity_v1"
    plain = model_for(directory, segment_by=None)  # segment_by off: one model for everybody
    plain.prepare()
    assert plain.predict(make_features("S1", tier="silver")).model_version == "propensity_v1"


def test_promote_and_rollback_act_on_one_segment(tmp_path):
    model = model_for(tmp_path, epochs=1)
    model.train()
    card = model.train()
    assert {row["segment"]: row.get("role") for row in card["segments"]}["tier=gold"] == "challenger"
    gold = model.segment_stores()["tier=gold"]
    gold.promote("propensity_v2", force=True)
    reloaded = model_for(tmp_path)
    reloaded.prepare()
    assert reloaded.predict(make_features("G", tier="gold")).model_version == "tier=gold/propensity_v2"
    assert reloaded.predict(make_features("B", tier="bronze")).model_version == "tier=bronze/propensity_v1"
    assert reloaded.predict(make_features("P", tier="platinum")).model_version == "propensity_v1"
    gold.rollback()
    back = model_for(tmp_path)
    back.prepare()
    assert back.predict(make_features("G", tier="gold")).model_version == "tier=gold/propensity_v1"


def test_a_segment_model_worse_than_the_global_one_is_not_served(segmented, tmp_path):
    import shutil

    directory, _, _ = segmented
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    card_path = copy / "models" / "segments" / "tier=gold" / "propensity_v1" / "card.json"
    card = json.loads(card_path.read_text())
    card["global_model"]["metrics"]["auc"] = card["metrics"][card["evaluation"]["headline"]]["auc"] + 0.01
    card_path.write_text(json.dumps(card))
    gated = model_for(copy, segment_must_beat_global=True)
    gated.prepare()
    assert "gold" not in gated.segment_models and "silver" in gated.segment_models
    assert gated.predict(make_features("G", tier="gold")).model_version == "propensity_v1"
    ungated = model_for(copy)
    ungated.prepare()
    assert ungated.predict(make_features("G", tier="gold")).model_version == "tier=gold/propensity_v1"
