"""Impressions, outcomes, experiments and the report, through the core with fake stages."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loyaltylens_core.batch import run_batch
from loyaltylens_core.kernel.errors import ConfigError, UsageError
from loyaltylens_core.kernel.experiments import Experiment, Variant, parse
from loyaltylens_core.kernel.feedback import outcome_schema
from loyaltylens_core.loop.outcomes import import_file
from loyaltylens_core.loop.report import auc, build_report, render_text, two_proportion_test, wilson
from loyaltylens_core.sdk.testing import FakeFeatureStore, FakeFeedbackStore, FakePlugin, make_features

IDS = [f"C{i:03d}" for i in range(1, 41)]


def fake(**components):
    store = FakeFeatureStore({c: make_features(c) for c in IDS})
    return FakePlugin(feature_store=store, **components)


def test_runs_record_one_impression_each_with_the_run_id(loyaltylens_pipeline):
    feedback = FakeFeedbackStore()
    pipeline = loyaltylens_pipeline(fake=fake(feedback_store=feedback))
    results = [pipeline.run(c) for c in IDS[:3]]
    pipeline.close()  # flushes the buffer
    rows = feedback.impressions.to_pylist()
    assert [r["impression_id"] for r in rows] == [r.run_id for r in results]
    first = rows[0]
    assert first["customer_id"] == "C001" and first["offer_id"] == results[0].top_offer.offer_id
    assert first["model_version"] == results[0].propensity.model_version and first["source"] == "run"
    assert first["tier"] == "gold" and first["variants"] == []


def test_record_impressions_false_records_nothing(loyaltylens_pipeline, tmp_path):
    config = tmp_path / "loyaltylens.toml"
    config.write_text("record_impressions = false\n")
    feedback = FakeFeedbackStore()
    pipeline = loyaltylens_pipeline(fake=fake(feedback_store=feedback), config_path=str(config))
    pipeline.run("C001")
    pipeline.close()
    assert feedback.impressions.num_rows == 0


def test_a_batch_records_its_impressions_in_bulk_with_the_ids_it_wrote(loyaltylens_pipeline, tmp_path):
    import pyarrow.parquet as pq

    feedback = FakeFeedbackStore()
    pipeline = loyaltylens_pipeline(fake=fake(feedback_store=feedback))
    out = tmp_path / "out.parquet"
    run_batch(pipeline, IDS, out, chunk_size=7)
    written = pq.read_table(out)
    assert feedback.impressions.num_rows == len(IDS)
    assert sorted(feedback.impressions["impression_id"].to_pylist()) == sorted(written["impression_id"].to_pylist())
    assert set(feedback.impressions["source"].to_pylist()) == {"batch"}
    assert all(i.endswith("-" + c) for i, c in zip(written["impression_id"].to_pylist(), IDS))


def _outcomes_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("impression_id,event,rating,time\n" + "\n".join(rows) + "\n")
    return path


def test_import_keeps_good_rows_rejects_bad_ones_by_line_and_is_idempotent(loyaltylens_pipeline, tmp_path):
    feedback = FakeFeedbackStore()
    pipeline = loyaltylens_pipeline(fake=fake(feedback_store=feedback))
    a, b = pipeline.run("C001").run_id, pipeline.run("C002").run_id
    pipeline.close()
    path = _outcomes_csv(tmp_path / "outcomes.csv", [
        f"{a},redeemed,5,2026-03-01T10:00:00Z",
        f"{a},viewed,,2026-03-01T09:00:00",
        f"{b},bought,,",                       # line 4: unknown event
        f"{b},clicked,9,",                     # line 5: rating out of range
        f"{b},clicked,,yesterday",             # line 6: bad time
        "nobody,viewed,,",                     # line 7: no such impression
        f"{a},redeemed,4,2026-03-02T00:00:00Z",  # line 8: repeats line 2's (impression, event)
    ])
    summary = import_file(feedback, path)
    assert (summary.rows, summary.added, summary.duplicates, summary.rejected) == (7, 2, 1, 4)
    rejects = (tmp_path / "outcomes.rejects.csv").read_text().splitlines()
    assert rejects[0] == "line,reason,impression_id,event,rating,time"
    reasons = {line.split(",")[0]: line.split(",")[1] for line in rejects[1:]}
    assert set(reasons) == {"4", "5", "6", "7"}
    assert "bought" in reasons["4"] and "1 to 5" in reasons["5"] and "ISO 8601" in reasons["6"]
    assert "no recorded impression" in reasons["7"]
    held = feedback.outcomes.to_pylist()
    assert [(r["impression_id"], r["event"], r["rating"]) for r in held] == [(a, "redeemed", 5), (a, "viewed", None)]
    assert held[1]["at"] == dt.datetime(2026, 3, 1, 9, tzinfo=dt.timezone.utc)  # no offset: UTC

    again = import_file(feedback, path)
    assert (again.added, again.duplicates) == (0, 3) and feedback.outcomes.num_rows == 2


def test_import_errors_are_one_line_and_write_nothing(tmp_path):
    feedback = FakeFeedbackStore()
    (tmp_path / "o.csv").write_text("impression_id,event,ratting\nx,viewed,5\n")
    with pytest.raises(UsageError, match="column 'ratting'"):
        import_file(feedback, tmp_path / "o.csv")
    (tmp_path / "p.csv").write_text("impression_id\nx\n")
    with pytest.raises(UsageError, match="no 'event' column"):
        import_file(feedback, tmp_path / "p.csv")
    with pytest.raises(UsageError, match="does not exist"):
        import_file(feedback, tmp_path / "missing.csv")
    assert feedback.outcomes.num_rows == 0


# --- experiments ----------------------------------------------------------------------

EXPERIMENT_TOML = """
[experiments.copy]
control = "a"
[experiments.copy.variants.a]
share = 0.5
[experiments.copy.variants.b]
share = 0.5
generator = "second"
"""


def test_assignment_is_deterministic_across_processes_and_follows_the_shares():
    experiment = Experiment("exp", (Variant("a", 0.2), Variant("b", 0.8)), "a")
    here = [experiment.assign(f"C{i}").name for i in range(2000)]
    code = ("from loyaltylens_core.kernel.experiments import Experiment, Variant\n"
            "e = Experiment('exp', (Variant('a', 0.2), Variant('b', 0.8)), 'a')\n"
            "print(','.join(e.assign(f'C{i}').name for i in range(2000)))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin"}).stdout.strip().split(",")
    assert here == there
    assert 0.17 < here.count("a") / 2000 < 0.23


class SecondGenerator:
    prompt_version = "second-v1"

    def generate(self, variables):
        from loyaltylens_core.kernel.contracts import GeneratedCopy

        return GeneratedCopy(headline="B", body="b", cta="go", prompt_version=self.prompt_version)


class SecondPlugin:
    from loyaltylens_core import hookimpl

    @hookimpl
    def register_generators(self, register):
        register("second", lambda settings, context: SecondGenerator())


def test_a_variant_that_swaps_the_generator_is_used_for_its_customers_and_recorded(loyaltylens_pipeline, tmp_path):
    config = tmp_path / "loyaltylens.toml"
    config.write_text(EXPERIMENT_TOML)
    feedback = FakeFeedbackStore()
    pipeline = loyaltylens_pipeline(fake=fake(feedback_store=feedback), extra_plugins=[SecondPlugin()],
                                    config_path=str(config))
    single = {c: pipeline.run(c) for c in IDS}
    many = {r.customer_id: r for r in pipeline.run_many(IDS)}
    pipeline.close()
    variants = {c: r.experiments["copy"] for c, r in single.items()}
    assert set(variants.values()) == {"a", "b"}
    for c, r in single.items():
        assert r.copy_.prompt_version == ("second-v1" if variants[c] == "b" else "fake-template-1")
        assert r.plugins["generator"].name == ("second" if variants[c] == "b" else "fake")
        assert many[c].experiments == r.experiments and many[c].copy_.headline == r.copy_.headline
    recorded = {row["customer_id"]: dict(row["variants"]) for row in feedback.impressions.to_pylist()}
    assert all(recorded[c] == {"copy": v} for c, v in variants.items())


def test_a_batch_splits_customers_between_variants_like_run(loyaltylens_pipeline, tmp_path):
    import pyarrow.parquet as pq

    config = tmp_path / "loyaltylens.toml"
    config.write_text(EXPERIMENT_TOML)
    pipeline = loyaltylens_pipeline(fake=fake(), extra_plugins=[SecondPlugin()], config_path=str(config))
    run_batch(pipeline, IDS, tmp_path / "out.parquet", chunk_size=9)
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for row in rows:
        variant = dict(row["variants"])["copy"]
        assert variant == pipeline.run(row["customer_id"]).experiments["copy"]
        assert row["prompt_version"] == ("second-v1" if variant == "b" else "fake-template-1")


@pytest.mark.parametrize("text, message", [
    ("[experiments.e.variants.a]\nshare = 0.5\n[experiments.e.variants.b]\nshare = 0.4\n", "add up to 0.9"),
    ("[experiments.e.variants.a]\nshare = 1.0\n", "at least two variants"),
    ("[experiments.e.variants.a]\nshare = 0.5\nmodel = 'x'\n[experiments.e.variants.b]\nshare = 0.5\n", "no key 'model'"),
    ("[experiments.e]\ncontrol = 'z'\n[experiments.e.variants.a]\nshare = 0.5\n[experiments.e.variants.b]\nshare = 0.5\n",
     "control 'z'"),
    ("[experiments.e.variants.a]\nshare = 0.5\n[experiments.e.variants.b]\nshare = 0.5\ngenerator = 'x'\n"
     "[experiments.f.variants.a]\nshare = 0.5\n[experiments.f.variants.b]\nshare = 0.5\nprompt_version = 'v2'\n",
     "both change the generator stage"),
])
def test_bad_experiments_are_config_errors(text, message, tmp_path):
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse(tomllib.loads(text)["experiments"], "file:x")


def test_a_pin_the_plugin_cannot_honour_fails_before_the_first_run(loyaltylens_pipeline, tmp_path):
    config = tmp_path / "loyaltylens.toml"
    config.write_text("[experiments.e.variants.a]\nshare = 0.5\n[experiments.e.variants.b]\nshare = 0.5\n"
                      "model_version = 'propensity_v2'\n")
    with pytest.raises(ConfigError, match="pins a model version, but propensity plugin 'fake' has no version setting"):
        loyaltylens_pipeline(fake=fake(), config_path=str(config))


# --- the report ------------------------------------------------------------------------

def test_statistics_match_known_values():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    test = two_proportion_test(60, 100, 45, 100)
    assert test["p_value"] == pytest.approx(0.0339, abs=1e-3) and test["significant"]
    assert test["lift"] == pytest.approx(60 / 45 - 1)
    rng = np.random.default_rng(0)
    scores, labels = rng.random(300).round(2), rng.random(300) < 0.4
    brute = np.mean([(s > t) + 0.5 * (s == t) for s in scores[labels] for t in scores[~labels]])
    assert auc(scores, labels) == pytest.approx(brute)


def _synthetic(n: int, lift: float, seed: int = 1) -> pa.Table:
    """Impressions whose outcomes follow their scores exactly, with a lift in variant b."""
    from loyaltylens_core.kernel.feedback import impression_schema, join_outcomes

    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.05, 0.6, n)
    variant = np.where(rng.random(n) < 0.5, "a", "b")
    redeemed = rng.random(n) < scores * np.where(variant == "b", lift, 1.0)
    now = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    impressions = pa.table({
        "impression_id": [f"i{i}" for i in range(n)], "shown_at": [now] * n,
        "customer_id": [f"C{i}" for i in range(n)], "offer_id": ["O1"] * n,
        "offer_category": np.where(rng.random(n) < 0.5, "cashback", "birthday").tolist(),
        "tier": ["gold"] * n, "channel": ["web"] * n, "score": scores, "model_version": ["m1"] * n,
        "prompt_version": ["p1"] * n, "source": ["run"] * n, "variants": [[("exp", v)] for v in variant],
    }, schema=impression_schema())
    ids = [f"i{i}" for i in np.flatnonzero(redeemed)]
    outcomes = pa.table({"impression_id": ids, "event": ["redeemed"] * len(ids), "rating": [None] * len(ids),
                         "at": [now] * len(ids)}, schema=outcome_schema())
    return join_outcomes(impressions, outcomes)


def test_the_report_finds_a_planted_lift_and_a_calibrated_score():
    experiments = {"exp": Experiment("exp", (Variant("a", 0.5), Variant("b", 0.5)), "a")}
    report = build_report(_synthetic(20_000, 1.3), experiments)
    b = report["experiments"]["exp"]["variants"][1]
    assert b["variant"] == "b" and b["significant"] and 0.2 < b["lift"] < 0.4
    calibration = report["calibration"]
    assert calibration["impressions"] == report["experiments"]["exp"]["variants"][0]["impressions"]  # control only
    assert calibration["ece"] < 0.02 and calibration["auc"] > 0.6
    assert {r["offer_category"] for r in report["by_category"]} == {"cashback", "birthday"}
    text = render_text(report)
    assert "lift +" in text and "significant" in text
    json.dumps(report)  # --json prints it


def test_no_lift_is_not_significant():
    experiments = {"exp": Experiment("exp", (Variant("a", 0.5), Variant("b", 0.5)), "a")}
    b = build_report(_synthetic(4000, 1.0, seed=3), experiments)["experiments"]["exp"]["variants"][1]
    assert not b["significant"] and b["p_value"] > 0.05
