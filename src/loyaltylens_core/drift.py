"""Drift between two feature snapshots: the population stability index (PSI) per feature and
of the propensity score, with bins from the reference snapshot's quantiles.

Quantile bins, not fixed ones: ``monetary_90d`` is money (0 to thousands), ``recency_days`` is
days; bins on [0, 1] would put every customer in one bin and never see a shift. Each bin of the
reference holds about the same share of customers, so PSI weighs every part of the
distribution. Categorical features (channel, tier) compare category shares.

PSI = sum over bins of (current - reference) * ln(current / reference), shares floored at
1e-4 so an empty bin is a large, finite contribution. Common reading: < 0.1 stable, 0.1-0.25 a
shift worth a look, > 0.25 a shift that needs action (the default thresholds).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from .contracts import CustomerFeatures

NUMERIC = ("recency_days", "frequency_30d", "monetary_90d", "offer_redemption_rate", "engagement_score")
CATEGORICAL = ("channel_preference", "tier")
FLOOR = 1e-4
MIN_DISTINCT = 3
STATUSES = ("ok", "warning", "critical")  # exit codes 0, 1, 2


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles. Ties are merged (a feature with few
    distinct values gets fewer bins). For a feature with many distinct values, a bin must
    also span at least MIN_DISTINCT of them: a ratio like offers redeemed / sent lives on a
    lattice (k/10 one month, k/11 the next), and a sliver of a bin around one lattice point
    would read as drift when the customers have not changed."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    distinct = np.unique(reference)
    if len(distinct) <= MIN_DISTINCT * bins:
        return edges
    kept: list[float] = []
    low = -np.inf
    for edge in edges.tolist():
        spanned = np.searchsorted(distinct, edge, "left") - np.searchsorted(distinct, low, "left")
        if spanned >= MIN_DISTINCT:
            kept.append(edge)
            low = edge
    return np.array(kept)


def _shares(counts: np.ndarray) -> np.ndarray:
    shares: np.ndarray = np.maximum(counts / max(1, counts.sum()), FLOOR)
    return shares


def psi_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    ref, cur = _shares(reference.astype(float)), _shares(current.astype(float))
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_numeric(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> tuple[float, list[dict[str, Any]]]:
    """PSI and the per-bin table (edges from the reference's quantiles)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    edges = quantile_edges(ref, bins)
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    bounds: list[float | None] = [None, *edges.tolist(), None]  # None: unbounded (JSON has no infinity)
    table = [{"low": bounds[i], "high": bounds[i + 1], "reference": float(ref_counts[i] / max(1, len(ref))),
              "current": float(cur_counts[i] / max(1, len(cur)))} for i in range(len(edges) + 1)]
    return psi_from_counts(ref_counts, cur_counts), table


def psi_categorical(reference: Sequence[str], current: Sequence[str]) -> tuple[float, list[dict[str, Any]]]:
    ref_counts, cur_counts = Counter(reference), Counter(current)
    categories = sorted(set(ref_counts) | set(cur_counts))
    ref = np.array([ref_counts[c] for c in categories])
    cur = np.array([cur_counts[c] for c in categories])
    table = [{"category": c, "reference": float(r / max(1, len(reference))), "current": float(k / max(1, len(current)))}
             for c, r, k in zip(categories, ref, cur)]
    return psi_from_counts(ref, cur), table


def status_of(value: float, warning: float, critical: float) -> str:
    return "critical" if value >= critical else "warning" if value >= warning else "ok"


def drift_report(
    reference: Sequence[CustomerFeatures],
    current: Sequence[CustomerFeatures],
    reference_scores: Sequence[float],
    current_scores: Sequence[float],
    *,
    warning: float = 0.1,
    critical: float = 0.25,
    bins: int = 10,
) -> dict[str, Any]:
    """Every feature's PSI and the score's, each with a status, and the overall status (the
    worst). What ``loyaltylens monitor --json`` prints."""
    if not 0 < warning < critical:
        raise ValueError("thresholds need 0 < warning < critical")
    rows: dict[str, dict[str, Any]] = {}
    for name in NUMERIC:
        value, table = psi_numeric([getattr(f, name) for f in reference], [getattr(f, name) for f in current], bins)
        rows[name] = {"psi": value, "status": status_of(value, warning, critical), "bins": table}
    for name in CATEGORICAL:
        value, table = psi_categorical([getattr(f, name) for f in reference], [getattr(f, name) for f in current])
        rows[name] = {"psi": value, "status": status_of(value, warning, critical), "categories": table}
    value, table = psi_numeric(reference_scores, current_scores, bins)
    rows["score"] = {"psi": value, "status": status_of(value, warning, critical), "bins": table}
    worst = max((STATUSES.index(r["status"]) for r in rows.values()), default=0)
    return {"status": STATUSES[worst], "thresholds": {"warning": warning, "critical": critical}, "bins": bins,
            "reference": {"as_of": str(reference[0].as_of) if reference else None, "customers": len(reference)},
            "current": {"as_of": str(current[0].as_of) if current else None, "customers": len(current)},
            "features": rows}
