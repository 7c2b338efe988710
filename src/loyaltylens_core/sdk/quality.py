"""Propensity quality: ranking, probability and calibration metrics, and calibrators.

The propensity score decides which offers a customer may see (eligible when an offer's
``min_propensity_threshold`` is at or below it), so it must be a probability, not only a
ranking: every propensity plugin reports the same metrics, computed here, and ships a
calibrator fitted the same way. numpy only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

EPS = 1e-6


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC with ties counted half (the Mann-Whitney U statistic)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def pr_auc(labels: Any, scores: Any) -> float:
    """Average precision: the area under the precision-recall curve, step-wise."""
    y = np.asarray(labels).astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def brier(labels: Any, scores: Any) -> float:
    return float(np.mean((np.asarray(scores, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


def reliability(labels: Any, scores: Any, bins: int = 10) -> list[dict[str, float]]:
    """Predicted vs observed rate per equal-width score bin (empty bins left out)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    which = np.minimum((s * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        rows = which == b
        if rows.any():
            table.append({"bin": b, "low": b / bins, "high": (b + 1) / bins, "n": int(rows.sum()),
                          "predicted": float(s[rows].mean()), "observed": float(y[rows].mean())})
    return table


def ece(labels: Any, scores: Any, bins: int = 10) -> float:
    """Expected calibration error: |predicted - observed| per bin, weighted by the bin's size."""
    table = reliability(labels, scores, bins)
    total = sum(row["n"] for row in table)
    return float(sum(row["n"] * abs(row["predicted"] - row["observed"]) for row in table) / max(1, total))


def quality(labels: Any, scores: Any, truth: Any = None, threshold: float = 0.5) -> dict[str, float]:
    """AUC, PR-AUC, Brier score and ECE of ``scores`` (plus precision, recall and accuracy at
    ``threshold``); with ``truth`` (each example's true probability, known for synthetic
    data) the same for the oracle that scores with it."""
    y = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    tp, fp, fn = float((predicted & y).sum()), float((predicted & ~y).sum()), float((~predicted & y).sum())
    out = {"auc": auc(labels, scores), "pr_auc": pr_auc(labels, scores), "brier": brier(labels, scores),
           "ece": ece(labels, scores), "precision": tp / (tp + fp) if tp + fp else 0.0,
           "recall": tp / (tp + fn) if tp + fn else 0.0, "accuracy": float((predicted == y).mean()),
           "positive_rate": float(np.mean(labels)), "n": float(len(labels))}
    if truth is not None:
        out.update({"oracle_auc": auc(labels, truth), "oracle_pr_auc": pr_auc(labels, truth),
                    "oracle_brier": brier(labels, truth), "oracle_ece": ece(labels, truth)})
    return out


# --- evaluation splits ------------------------------------------------------------------


def customer_split(customer_id: str) -> str:
    """Stable train/val/test assignment by customer, so no customer leaks across splits."""
    import hashlib

    bucket = int(hashlib.sha256(customer_id.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < 15 else "val" if bucket < 30 else "train"


def evaluation_rows(customer_ids: Sequence[str], as_of: Sequence[Any]) -> dict[str, np.ndarray]:
    """Row indices of each evaluation split. ``test_latest`` is the latest snapshot window,
    every customer: production scores the future, so the model trains and validates on
    earlier snapshots only. ``train``/``val``/``test`` split the earlier snapshots by
    customer. With a single snapshot there is no later window: ``test_latest`` is empty."""
    dates = np.asarray(as_of)
    latest = dates == dates.max() if len(dates) else np.zeros(0, dtype=bool)
    if latest.all():
        latest = np.zeros(len(dates), dtype=bool)
    splits = np.array([customer_split(c) for c in customer_ids])
    rows = {name: np.flatnonzero((splits == name) & ~latest) for name in ("train", "val", "test")}
    rows["test_latest"] = np.flatnonzero(latest)
    return rows


# --- calibrators ---------------------------------------------------------------------


def logit(p: Any) -> np.ndarray:
    clipped = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    out: np.ndarray = np.log(clipped / (1 - clipped))
    return out


def sigmoid(z: Any) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
    return out


def fit_temperature(scores: Any, labels: Any) -> float:
    """The T minimising log loss of sigmoid(logit(score) / T): a golden-section search on
    log T (the loss is unimodal in it)."""
    z, y = logit(scores), np.asarray(labels, dtype=np.float64)

    def loss(log_t: float) -> float:
        p = np.clip(sigmoid(z / np.exp(log_t)), EPS, 1 - EPS)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(60):
        if loss(a) < loss(b):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return float(np.exp((low + high) / 2))


def fit_isotonic(scores: Any, labels: Any) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: a non-decreasing step function of the score, returned as
    (score knots, calibrated values) for linear interpolation between block centres."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    values: list[float] = []
    weights: list[float] = []
    centres: list[float] = []
    for score, label in zip(s[order], y[order]):
        values.append(label)
        weights.append(1.0)
        centres.append(score)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            v = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            c = (centres[-2] * weights[-2] + centres[-1] * weights[-1]) / w
            values[-2:], weights[-2:], centres[-2:] = [v], [w], [c]
    knots, levels = [0.0], [values[0]]
    for centre, value in zip([*centres, 1.0], [*values, values[-1]]):
        if centre > knots[-1]:  # strictly increasing knots (interpolation needs them)
            knots.append(float(centre))
            levels.append(value)
    return knots, [float(min(1 - EPS, max(EPS, value))) for value in levels]


def calibrate(scores: Any, calibrator: dict[str, Any] | None) -> np.ndarray:
    """Apply a calibrator from ``choose_calibrator`` (None: scores unchanged)."""
    s = np.asarray(scores, dtype=np.float64)
    if not calibrator or calibrator.get("method") == "none":
        return s
    if calibrator["method"] == "temperature":
        return sigmoid(logit(s) / float(calibrator["temperature"]))
    if calibrator["method"] == "isotonic":
        calibrated: np.ndarray = np.interp(s, calibrator["x"], calibrator["y"])
        return calibrated
    raise ValueError(f"unknown calibration method {calibrator['method']!r}")


def choose_calibrator(scores: Any, labels: Any, seed: int = 0) -> dict[str, Any]:
    """Temperature scaling or isotonic regression, whichever has the lower log loss on the
    validation examples in 2-fold cross-fitting (each fitted on one half, scored on the
    other, so isotonic's flexibility is not rewarded for memorising); then refitted on all
    of them. Returns the calibrator with both methods' cross-fitted losses."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    fold = np.random.default_rng(seed).random(len(s)) < 0.5
    losses = {"temperature": 0.0, "isotonic": 0.0, "none": 0.0}
    for fit, held in ((fold, ~fold), (~fold, fold)):
        candidates: dict[str, dict[str, Any]] = {
            "temperature": {"method": "temperature", "temperature": fit_temperature(s[fit], y[fit])},
            "isotonic": dict(zip(("x", "y"), fit_isotonic(s[fit], y[fit])), method="isotonic"),
            "none": {"method": "none"},
        }
        for name, calibrator in candidates.items():
            p = np.clip(calibrate(s[held], calibrator), EPS, 1 - EPS)
            losses[name] += float(-np.sum(y[held] * np.log(p) + (1 - y[held]) * np.log(1 - p))) / len(s)
    best = min(losses, key=lambda name: losses[name])
    chosen: dict[str, Any]
    if best == "temperature":
        chosen = {"method": "temperature", "temperature": fit_temperature(s, y)}
    elif best == "isotonic":
        x, v = fit_isotonic(s, y)
        chosen = {"method": "isotonic", "x": x, "y": v}
    else:
        chosen = {"method": "none"}
    chosen["validation_log_loss"] = losses
    return chosen


def summary_line(metrics: dict[str, float], keys: Sequence[str] = ("auc", "pr_auc", "brier", "ece")) -> str:
    """"auc 0.742 (oracle 0.771), brier 0.181 (oracle 0.176), ..." for the CLI."""
    parts = []
    for key in keys:
        if key in metrics:
            oracle = metrics.get(f"oracle_{key}")
            parts.append(f"{key} {metrics[key]:.3f}" + (f" (oracle {oracle:.3f})" if oracle is not None else ""))
    return ", ".join(parts)


def evaluate_model(data: Any, raw: Any, rows: dict[str, Any], threshold: float, seed: int = 0) -> dict[str, Any]:
    """The model card's evaluation, the same for every propensity plugin: a calibrator
    fitted on the validation rows, then per split the calibrated quality (beside the oracle
    when ``data.truth`` is known) and the ECE before calibration; the headline split (the
    latest window when there is one) and its metrics at the top level, and its reliability.
    ``data`` is the TrainingSet, ``raw`` the uncalibrated scores of all its examples."""
    labels = np.asarray(data.labels, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    calibration = choose_calibrator(raw[rows["val"]], labels[rows["val"]], seed=seed)
    calibrated = calibrate(raw, calibration)
    truth = np.asarray(data.truth) if data.truth is not None else None
    per_split = {
        name: {**quality(labels[r], calibrated[r], None if truth is None else truth[r], threshold),
               "ece_uncalibrated": ece(labels[r], raw[r])}
        for name, r in rows.items() if len(r)
    }
    headline = "test_latest" if "test_latest" in per_split else "test"
    return {
        "split": {name: int(len(r)) for name, r in rows.items()},
        "evaluation": {
            "headline": headline,
            "latest_as_of": max(f.as_of for f in data.features).isoformat(),
            "oracle": "the demo generator's true probabilities" if truth is not None else None,
        },
        **{key: per_split[headline][key] for key in ("auc", "pr_auc", "brier", "ece", "oracle_auc", "oracle_brier")
           if key in per_split[headline]},
        "metrics": per_split,
        "calibration": calibration,
        "reliability": reliability(labels[rows[headline]], calibrated[rows[headline]]),
    }


def plot_reliability(card: dict[str, Any], path: Any) -> None:
    """Write ``path`` (PNG): the calibrated model's reliability on the card's headline
    window, the diagonal, and the bin sizes. Needs matplotlib (the propensity plugins
    depend on it); the Agg backend needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = card.get("reliability") or []
    headline = card.get("evaluation", {}).get("headline", "test")
    metrics = card.get("metrics", {}).get(headline, {})
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    top.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", label=card["model_version"])
    top.set_ylabel("observed redemption rate")
    title = f"{card['model_version']} on {headline}"
    if "ece" in metrics:
        title += f"\nECE {metrics['ece']:.3f}, Brier {metrics['brier']:.3f}, AUC {metrics['auc']:.3f}"
        if "oracle_auc" in metrics:
            title += f" (oracle {metrics['oracle_auc']:.3f})"
    top.set_title(title, fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([(r["low"] + r["high"]) / 2 for r in rows], [r["n"] for r in rows], width=0.09, color="tab:blue")
    bottom.set_xlabel("predicted probability (calibrated)")
    bottom.set_ylabel("examples")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
