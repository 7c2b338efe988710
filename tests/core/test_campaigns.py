"""Campaigns in the core, with fake plugins: the config table checked in one line per
mistake, the holdout split, channels, the campaign's placement, its offer collection and
frequency rule in every decision, and a run that is idempotent, resumable and recorded."""

from __future__ import annotations

import pytest

from loyaltylens_core.kernel.campaigns import Campaign, demo_campaign
from loyaltylens_core.kernel.config import load_config
from loyaltylens_core.kernel.errors import ConfigError, UsageError
from loyaltylens_core.sdk.testing import FakeDecider, FakeFeatureStore, FakePlugin, make_features


def config_file(tmp_path, text: str) -> str:
    path = tmp_path / "loyaltylens.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("table, fragment", [
    ("audience = 'tier == \"gld\"'", "audience"),
    ("audiense = 'tier == \"gold\"'", "has no key 'audiense'"),
    ("channels = [\"fax\"]", "channel 'fax' is not one of email, push, sms, app"),
    ("start = 2026-12-10\nend = 2026-12-01", "ends (2026-12-01) before it starts (2026-12-10)"),
    ("holdout = 1.5", "holdout must be a share from 0 to below 1"),
    ("frequency = { group = \"g\" }", "frequency must be { group = NAME, days = N }"),
    ("placement = \"banner\"", "placement 'banner' is not configured"),
    ("categories = []", "categories must be a list of non-empty strings"),
])
def test_a_bad_campaign_table_is_one_line_naming_it(tmp_path, table, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(config_file(tmp_path, f"[campaigns.spring]\n{table}\n"), env={})
    assert fragment in error.value.message and "[campaigns.spring]" in error.value.message
    assert "\n" not in error.value.message


def test_a_campaign_name_must_be_safe_in_paths(tmp_path):
    with pytest.raises(ConfigError, match="lowercase letters"):
        load_config(config_file(tmp_path, "[campaigns.'Spring Sale']\n"), env={})


def test_without_campaigns_the_demo_one_is_there_and_names_are_suggested(tmp_path):
    config = load_config(env={})
    assert list(config.all_campaigns()) == ["gold-monthly"]
    with pytest.raises(UsageError, match="gold-monthly"):
        config.campaign("gold-montly")
    mine = load_config(config_file(tmp_path, "[campaigns.spring]\naudience_ids = 'ids.txt'\n"), env={})
    assert list(mine.all_campaigns()) == ["spring"], "configured campaigns replace the demo one"
    assert mine.campaign("spring").audience_ids == tmp_path / "ids.txt", "relative to the config file"


def test_the_holdout_is_a_stable_share_independent_of_other_campaigns():
    ids = [f"C{n:05d}" for n in range(20_000)]
    a, b = Campaign(name="a", holdout=0.1), Campaign(name="b", holdout=0.1)
    held_a = {c for c in ids if a.arm(c) == "holdout"}
    held_b = {c for c in ids if b.arm(c) == "holdout"}
    assert 0.09 < len(held_a) / len(ids) < 0.11
    assert held_a == {c for c in ids if Campaign(name="a", holdout=0.1).arm(c) == "holdout"}
    assert 0.005 < len(held_a & held_b) / len(ids) < 0.015, "independent splits overlap by about 1%"
    assert all(Campaign(name="a").arm(c) == "treated" for c in ids[:100])


def test_one_channel_per_customer_by_preference():
    both = Campaign(name="x", channels=("email", "push"))
    assert both.channel_for("mobile") == "push" and both.channel_for("web") == "email"
    assert both.channel_for("in-store") == "email"
    assert Campaign(name="y", channels=("sms",)).channel_for("mobile") == "sms"


def test_the_campaign_placement_resolves_by_name_for_batch_workers(tmp_path):
    config = load_config(config_file(tmp_path, """
[placements.banner]
k = 1
[campaigns.spring]
placement = "banner"
categories = ["free_item"]
frequency = { group = "weekly", days = 7 }
"""), env={})
    placement = config.placement("campaign:spring@spring-20261206")
    assert (placement.name, placement.k, placement.categories) == ("banner", 1, ("free_item",))
    assert (placement.frequency.group, placement.frequency.days, placement.frequency.run) == \
        ("weekly", 7, "spring-20261206")
    with pytest.raises(UsageError, match="campaign 'sprung' is not configured"):
        config.placement("campaign:sprung@x")


def test_offers_outside_the_collection_never_reach_the_decider(loyaltylens_pipeline, tmp_path):
    decider = FakeDecider()
    pipeline = loyaltylens_pipeline(fake=FakePlugin(decision=decider), config_path=config_file(
        tmp_path, '[campaigns.spring]\ncategories = ["points_multiplier"]\n'))
    result = pipeline.run("C001", placement="campaign:spring@r1")
    assert [c.offer.offer_id for c in result.candidates] == ["F2"]
    assert {c.offer.category for c in decider.requests[0].candidates} == {"points_multiplier"}
    assert result.decision.dropped["not_in_collection"] == 1  # F1; F3 is above the score, not retrieved


class Forgetful:
    """A decider that keeps no frequency rule (declares neither CapsFrequency nor previews)."""

    def decide(self, request):
        return FakeDecider().decide(request)


def test_a_frequency_rule_a_decider_would_ignore_is_refused(loyaltylens_pipeline, tmp_path):
    pipeline = loyaltylens_pipeline(fake=FakePlugin(decision=Forgetful()), config_path=config_file(
        tmp_path, '[campaigns.spring]\nfrequency = { group = "weekly", days = 7 }\n'))
    with pytest.raises(ConfigError, match="does not keep frequency caps"):
        pipeline.run("C001", placement="campaign:spring@r1")
    assert pipeline.run("C001").top_offer is not None, "requests of no campaign are unaffected"


def _store() -> FakeFeatureStore:
    tiers = ["gold", "silver", "gold", "bronze", "gold", "platinum"] * 20
    return FakeFeatureStore({f"C{n:03d}": make_features(f"C{n:03d}", tier=t, channel_preference="web" if n % 4 < 2 else "mobile")
                             for n, t in enumerate(tiers, 1)})


def test_a_run_exports_decides_records_and_is_idempotent(loyaltylens_pipeline, tmp_path):
    import csv

    from loyaltylens_core.campaign import runner

    fake = FakePlugin(feature_store=_store())
    pipeline = loyaltylens_pipeline(fake=fake, config_path=config_file(tmp_path, """
[campaigns.gold]
audience = 'tier == "gold"'
holdout = 0.2
channels = ["email", "push"]
frequency = { group = "weekly", days = 7 }
"""))
    campaign = pipeline.config.campaign("gold")
    dry = runner.dry_run(pipeline, campaign)
    assert dry["audience"] == 60 and dry["treated"] + dry["holdout"] == 60
    assert not (tmp_path / "data" / "campaigns").exists()
    done = runner.run(pipeline, campaign, out=str(tmp_path / "out"), chunk_size=7)
    assert done["status"] == "done" and done["offered"] == dry["offered"] == dry["treated"]
    by_channel = {e["channel"]: e["customers"] for e in done["exports"] if e["format"] == "csv"}
    assert sum(by_channel.values()) == done["offered"] and set(by_channel) == {"email", "push"}
    with open(tmp_path / "out" / "gold-push.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["channel"] == "push" and r["impression_id"].startswith(done["run_id"]) for r in rows)
    impressions = pipeline.component("feedback_store").impressions
    assert impressions.num_rows == 60 and set(impressions["source"].to_pylist()) == {"campaign"}
    assert impressions["offer_id"].null_count == done["holdout"]

    assert runner.run(pipeline, campaign)["already_done"]
    assert pipeline.component("feedback_store").impressions.num_rows == 60, "a second run records nothing"
    again = runner.run(pipeline, campaign, rerun=True)
    assert again["run_id"].endswith("-r2") and again["offered"] == 0, "the frequency rule held"
    assert runner.dry_run(pipeline, campaign)["capped"] == dry["treated"]


def test_a_day_outside_the_campaign_is_refused(loyaltylens_pipeline, tmp_path):
    import datetime as dt

    from loyaltylens_core.campaign import runner

    pipeline = loyaltylens_pipeline(config_path=config_file(tmp_path, "[campaigns.xmas]\nstart = 2026-12-20\n"))
    with pytest.raises(UsageError, match="runs 2026-12-20"):
        runner.run(pipeline, pipeline.config.campaign("xmas"), day=dt.date(2026, 12, 1))


def test_the_demo_campaign_is_gold_with_a_tenth_held_out():
    demo = demo_campaign()
    assert (demo.audience, demo.holdout, demo.frequency) == ('tier == "gold"', 0.1, ("monthly", 28))


def test_report_plots_take_rates_of_zero_and_one():
    """Wilson bounds at 0% or 100% can sit a rounding error inside the rate (an offer nobody
    redeemed): the plot's error bars must still draw."""
    from loyaltylens_core.loop.report import _rate_row
    from loyaltylens_core.loop.report_html import _rate_bars

    rows = [_rate_row("offer_id", o, n, x) for o, n, x in (("A", 7, 0), ("B", 3, 3), ("C", 11, 0), ("D", 1, 1))]
    assert _rate_bars(rows, "offer_id", "By offer")
