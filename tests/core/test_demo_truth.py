"""The demo's true redemption probabilities agree with the labels the demo realises:
calibrated (a generator bug or a mis-derived formula shows up as a gap) and better at
ranking than any feature alone."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np

from loyaltylens_core.sdk import quality as metrics
from loyaltylens_core.sdk.demo import START_DATE, ensure_demo_data, true_probability


def test_true_probabilities_match_realised_labels(tmp_path):
    demo = ensure_demo_data(tmp_path / "demo", seed=11, customers=3000)
    redeemed: dict[str, list[dt.date]] = {}
    with demo.offer_events_csv.open() as fh:
        for row in csv.DictReader(fh):
            if row["redeemed"] == "1":
                redeemed.setdefault(row["customer_id"], []).append(dt.date.fromisoformat(row["redeemed_date"]))
    ids, days, labels = [], [], []
    for offset in (60, 90, 120, 140):
        as_of = START_DATE + dt.timedelta(days=offset)
        for n in range(1, demo.customers + 1):
            customer = f"C{n:03d}"
            ids.append(customer)
            days.append(as_of)
            labels.append(int(any(as_of < d <= as_of + dt.timedelta(days=30) for d in redeemed.get(customer, []))))
    truth = np.asarray(true_probability(demo, ids, days, 30))
    y = np.asarray(labels)
    assert truth.shape == y.shape and ((truth > 0) & (truth < 1)).all()
    assert abs(truth.mean() - y.mean()) < 0.015
    assert metrics.ece(y, truth) < 0.03
    assert metrics.auc(y, truth) > 0.6


def test_no_truth_without_the_file(tmp_path):
    demo = ensure_demo_data(tmp_path / "demo", seed=3, customers=50)
    (demo.directory / "truth.npz").unlink()
    assert true_probability(demo, ["C001"], [START_DATE + dt.timedelta(days=90)], 30) is None
