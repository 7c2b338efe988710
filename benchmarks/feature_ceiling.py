"""How close to the demo's oracle can any feature bring a model? (issue "Propensity at production shape")

The issue's target is a default model within 0.02 AUC of the oracle, expecting richer features to
close the gap. This measures where the gap comes from, on the same held-out window `train` uses
(the latest labelled snapshot; earlier snapshots train), with one learner (LightGBM) for every
feature set, for three seeds:

- `v1`: the features the store computes today (feature_duckdb's FEATURES_SQL);
- `v1 + history`: plus the richer point-in-time features the issue lists (14/90/180-day
  frequency, the previous 30 days' frequency for the trend, offers received and redeemed, days
  since the last offer and the last redemption);
- `v1 + history + posterior`: plus the exact Bayesian posterior mean of each customer's hidden
  responsiveness given every offer outcome seen by `as_of`, computed with the generator's own
  redemption model and prior. No feature can know more about responsiveness than this, so it
  is the ceiling for features built from the history;
- `v1 + history + hidden`: plus the hidden responsiveness itself (what the oracle knows);
- `oracle`: the generator's true probability (`sdk.demo.true_probability`).

Reading: if `posterior` lands near `v1` and `hidden` near the oracle, the gap is information the
data does not contain (a few Bernoulli outcomes per customer), not missing features.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from loyaltylens_core.sdk.demo import START_DATE, DemoData, ensure_demo_data, true_probability
from loyaltylens_feature_duckdb.store import FEATURES_SQL, LABELS_SQL

SEEDS = (1, 2, 3)
SNAPSHOTS, EVERY_DAYS, HORIZON_DAYS = 4, 30, 30  # feature_duckdb's defaults
V1 = ("recency_days", "frequency_30d", "monetary_90d", "offer_redemption_rate", "engagement_score", "tier_index")
HISTORY = ("frequency_14d", "frequency_prev_30d", "frequency_90d", "frequency_180d", "offers_received",
           "offers_redeemed", "days_since_offer", "days_since_redemption")

HISTORY_SQL = """
CREATE TABLE history AS
WITH b AS (SELECT customer_id, as_of FROM features),
tx AS (
    SELECT b.customer_id, b.as_of,
        count(*) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 14 DAY) AS frequency_14d,
        count(*) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 60 DAY
                         AND t.tx_date <= b.as_of - INTERVAL 30 DAY) AS frequency_prev_30d,
        count(*) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 90 DAY) AS frequency_90d,
        count(*) FILTER (WHERE t.tx_date > b.as_of - INTERVAL 180 DAY) AS frequency_180d
    FROM b JOIN transactions t ON t.customer_id = b.customer_id AND t.tx_date <= b.as_of
    GROUP BY b.customer_id, b.as_of
),
ev AS (
    SELECT b.customer_id, b.as_of, count(*) AS offers_received,
        count(*) FILTER (WHERE e.redeemed = 1 AND e.redeemed_date <= b.as_of) AS offers_redeemed,
        date_diff('day', max(e.sent_date), b.as_of) AS days_since_offer,
        date_diff('day', max(e.redeemed_date) FILTER (WHERE e.redeemed = 1 AND e.redeemed_date <= b.as_of),
                  b.as_of) AS days_since_redemption
    FROM b JOIN offer_events e ON e.customer_id = b.customer_id AND e.sent_date <= b.as_of
    GROUP BY b.customer_id, b.as_of
)
SELECT b.customer_id, b.as_of,
    coalesce(frequency_14d, 0) AS frequency_14d, coalesce(frequency_prev_30d, 0) AS frequency_prev_30d,
    coalesce(frequency_90d, 0) AS frequency_90d, coalesce(frequency_180d, 0) AS frequency_180d,
    coalesce(offers_received, 0) AS offers_received, coalesce(offers_redeemed, 0) AS offers_redeemed,
    coalesce(days_since_offer, 365) AS days_since_offer, coalesce(days_since_redemption, 365) AS days_since_redemption
FROM b LEFT JOIN tx USING (customer_id, as_of) LEFT JOIN ev USING (customer_id, as_of)
"""


def load(demo: DemoData) -> duckdb.DuckDBPyConnection:
    """The demo's raw tables, the store's own feature snapshots and the history features."""
    con = duckdb.connect()
    for table in ("customers", "transactions", "offer_events"):
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv(?, header=true, auto_detect=true)",
                    [str(demo.directory / f"{table}.csv")])
    end = con.execute("SELECT max(tx_date) FROM transactions").fetchone()[0]  # type: ignore[index]
    con.execute(FEATURES_SQL, [[end - dt.timedelta(days=EVERY_DAYS * i) for i in reversed(range(SNAPSHOTS))]])
    con.execute(HISTORY_SQL)
    return con


def posterior_responsiveness(demo: DemoData, events: list[tuple[str, dt.date, int]],
                             rows: np.ndarray, days: np.ndarray) -> np.ndarray:
    """E[base_logit | every offer whose 8-day redemption window closed by as_of], on a grid
    holding the generator's prior (its customers' base_logits, equal-mass quantiles), with the
    generator's likelihood sigmoid(base_logit + 0.6 min(transactions in the 15 days to the send, 3))."""
    with np.load(demo.directory / "truth.npz") as truth:
        counts, prior = truth["counts"].astype(np.float64), truth["base_logit"].astype(np.float64)
    cumulative = np.hstack([np.zeros((len(counts), 1)), np.cumsum(counts, axis=1)])
    grid = np.quantile(prior, np.linspace(0.005, 0.995, 80))
    sent: dict[int, list[tuple[int, int]]] = {}
    for customer, sent_date, redeemed in events:
        sent.setdefault(int(customer[1:]) - 1, []).append(((sent_date - START_DATE).days, int(redeemed)))
    out = np.empty(len(rows))
    for i, (row, day) in enumerate(zip(rows, days)):
        log_likelihood = np.zeros(len(grid))
        for send_day, redeemed in sent.get(int(row), []):
            if send_day + 7 > day:
                continue
            recent = min(cumulative[row, send_day + 1] - cumulative[row, max(0, send_day - 14)], 3)
            p = 1 / (1 + np.exp(-(grid + 0.6 * recent)))
            log_likelihood += np.log(p if redeemed else 1 - p)
        weights = np.exp(log_likelihood - log_likelihood.max())
        out[i] = float((weights * grid).sum() / weights.sum())
    return out


def one_seed(seed: int, work: Path) -> dict[str, float]:
    from lightgbm import LGBMClassifier
    from sklearn.metrics import roc_auc_score

    demo = ensure_demo_data(work / f"seed{seed}", seed=seed)
    con = load(demo)
    labels = con.execute(LABELS_SQL, [HORIZON_DAYS, HORIZON_DAYS]).fetchall()
    columns = ", ".join([f"f.{c}" for c in V1[:-1]] + [f"h.{c}" for c in HISTORY])
    features = {(r[0], r[1]): r[2:] for r in con.execute(
        f"SELECT f.customer_id, f.as_of, {columns}, list_position(['bronze','silver','gold','platinum'], f.tier) "
        "FROM features f JOIN history h USING (customer_id, as_of)").fetchall()}
    x = np.array([features[(c, a)] for c, a, _ in labels], dtype=np.float64)
    names = list(V1[:-1]) + list(HISTORY) + ["tier_index"]
    y = np.array([label for *_, label in labels])
    as_of = np.array([a for _, a, _ in labels])
    rows = np.array([int(c[1:]) - 1 for c, _, _ in labels])
    days = np.array([(a - START_DATE).days for a in as_of])
    events = con.execute("SELECT customer_id, sent_date, redeemed FROM offer_events").fetchall()
    with np.load(demo.directory / "truth.npz") as truth:
        hidden = truth["base_logit"].astype(np.float64)[rows]
    posterior = posterior_responsiveness(demo, events, rows, days)
    x = np.hstack([x, posterior[:, None], hidden[:, None]])
    names += ["posterior", "hidden"]
    train, test = as_of < as_of.max(), as_of == as_of.max()

    def auc(feature_set: tuple[str, ...]) -> float:
        picked = [names.index(n) for n in feature_set]
        model = LGBMClassifier(n_estimators=300, learning_rate=0.03, num_leaves=15, min_child_samples=50,
                               verbose=-1, random_state=seed)
        model.fit(x[train][:, picked], y[train])
        scores: Any = model.predict_proba(x[test][:, picked])
        return float(roc_auc_score(y[test], scores[:, 1]))

    truth_p: Any = true_probability(demo, [c for c, _, _ in labels], list(as_of), HORIZON_DAYS)
    return {
        "v1": auc(V1),
        "v1 + history": auc(V1 + HISTORY),
        "v1 + history + posterior": auc(V1 + HISTORY + ("posterior",)),
        "v1 + history + hidden": auc(V1 + HISTORY + ("hidden",)),
        "oracle": float(roc_auc_score(y[test], truth_p[test])),
        # How much of the hidden trait the history reveals (1.0 would be all of it).
        "corr(posterior, hidden)": float(np.corrcoef(posterior[test], hidden[test])[0, 1]),
    }


def main() -> int:
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="ll-bench-ceiling-") as work:
        for seed in SEEDS:
            results.append(one_seed(seed, Path(work)))
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[-1].items()), flush=True)
    print("\n| features (LightGBM, held-out latest window) | AUC mean (min-max) | gap to oracle |")
    print("|---|---|---|")
    for key in results[0]:
        if key.startswith("corr"):
            continue
        values = [r[key] for r in results]
        gap = statistics.mean(r["oracle"] - r[key] for r in results)
        print(f"| {key} | {statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f}) | {gap:.3f} |")
    correlation = [r["corr(posterior, hidden)"] for r in results]
    print(f"\ncorrelation of the posterior with the hidden responsiveness: {statistics.mean(correlation):.2f} "
          f"({min(correlation):.2f}-{max(correlation):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
