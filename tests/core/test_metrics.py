"""Quality metrics and calibrators against their definitions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from loyaltylens_core.sdk import quality as metrics


def test_auc_is_the_mann_whitney_statistic_with_ties_halved():
    labels = np.array([0, 0, 1, 1])
    assert metrics.auc(labels, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc(labels, [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_pr_auc_brier_and_ece_by_hand():
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.1]
    assert metrics.pr_auc(labels, scores) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert metrics.brier(labels, scores) == pytest.approx((0.01 + 0.64 + 0.09 + 0.01) / 4)
    # bins: 0.1 -> bin 1 (obs 0); 0.7 -> bin 7 (obs 1); 0.8, 0.9 -> bins 8, 9
    assert metrics.ece(labels, scores) == pytest.approx((0.1 + 0.3 + 0.8 + 0.1) / 4)


def test_a_calibrator_fixes_a_miscalibrated_model_and_keeps_its_ranking():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.05, 0.95, 20000)
    labels = (rng.random(20000) < truth).astype(int)
    overconfident = metrics.sigmoid(3 * metrics.logit(truth))  # right ranking, wrong probabilities
    chosen = metrics.choose_calibrator(overconfident[:10000], labels[:10000])
    fixed = metrics.calibrate(overconfident[10000:], chosen)
    assert chosen["method"] in ("temperature", "isotonic")
    assert metrics.ece(labels[10000:], overconfident[10000:]) > 0.1
    assert metrics.ece(labels[10000:], fixed) < 0.02
    assert metrics.auc(labels[10000:], fixed) == pytest.approx(metrics.auc(labels[10000:], overconfident[10000:]),
                                                                abs=0.005)


def test_temperature_recovers_the_scale_and_isotonic_is_monotone():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 40000)
    labels = (rng.random(40000) < metrics.sigmoid(z)).astype(int)
    assert metrics.fit_temperature(metrics.sigmoid(2 * z), labels) == pytest.approx(2.0, rel=0.1)
    knots, values = metrics.fit_isotonic(metrics.sigmoid(z), labels)
    assert knots == sorted(set(knots)) and values == sorted(values)


def test_the_latest_window_is_held_out_from_every_customer_split():
    ids = [f"C{i:03d}" for i in range(300)] * 2
    dates = [dt.date(2026, 5, 1)] * 300 + [dt.date(2026, 6, 1)] * 300
    rows = metrics.evaluation_rows(ids, dates)
    assert set(rows["test_latest"]) == set(range(300, 600))
    earlier = np.concatenate([rows["train"], rows["val"], rows["test"]])
    assert sorted(earlier) == list(range(300))
    assert not set(np.array(ids)[rows["train"]]) & set(np.array(ids)[rows["test"]])
    single = metrics.evaluation_rows(ids[:300], dates[:300])
    assert len(single["test_latest"]) == 0 and len(single["train"]) > 0
