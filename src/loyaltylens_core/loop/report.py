"""``loyaltylens report``: what the offers handed out achieved.

Reads one row per impression with its outcomes (``impressions.JOINED_SCHEMA``) and
computes, column-wise in numpy and Arrow (a million impressions take about a second):

- redemption per experiment variant with a 95% Wilson interval, and lift against the
  control with a two-proportion z-test (significant when p < 0.05);
- propensity calibration: predicted score vs observed redemption by score decile, Brier
  score, expected calibration error and AUC of the score on the outcomes;
- redemption by offer category, tier, model version and prompt version.

A redemption is the outcome: an impression counts as redeemed when a ``redeemed`` event
was reported for it. Impressions without any outcome count as not redeemed: report
after outcomes have had time to arrive (``--since`` narrows the window).
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_test(x1: int, n1: int, x0: int, n0: int) -> dict[str, Any]:
    """Variant (1) against control (0): absolute difference with its 95% interval,
    relative lift, and the two-sided p-value of the pooled z-test."""
    if n1 == 0 or n0 == 0:
        return {"difference": None, "difference_ci": None, "lift": None, "p_value": None, "significant": False}
    p1, p0 = x1 / n1, x0 / n0
    pooled = (x1 + x0) / (n1 + n0)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    z = (p1 - p0) / se_pooled if se_pooled > 0 else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2))
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    return {
        "difference": p1 - p0,
        "difference_ci": [p1 - p0 - Z95 * se, p1 - p0 + Z95 * se],
        "lift": (p1 / p0 - 1) if p0 > 0 else None,
        "p_value": p_value,
        "significant": bool(p_value < 0.05),
    }


def auc(scores: Any, labels: Any) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None with one class only."""
    import numpy as np

    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _rate_row(key: str, value: Any, n: int, redeemed: int) -> dict[str, Any]:
    low, high = wilson(redeemed, n)
    return {key: value, "impressions": n, "redeemed": redeemed,
            "rate": redeemed / n if n else 0.0, "ci": [low, high]}


def _by(table: Any, column: str) -> list[dict[str, Any]]:
    grouped = table.group_by(column).aggregate([("redeemed", "sum"), ("redeemed", "count")])
    rows = [
        _rate_row(column, key, int(n), int(x))
        for key, x, n in zip(grouped[column].to_pylist(), grouped["redeemed_sum"].to_pylist(),
                             grouped["redeemed_count"].to_pylist())
    ]
    return sorted(rows, key=lambda r: (-r["impressions"], str(r[column])))


def calibration(scores: Any, redeemed: Any, bins: int = 10) -> dict[str, Any]:
    """Predicted vs observed by score decile (equal-count bins of the sorted scores)."""
    import numpy as np

    n = len(scores)
    if n == 0:
        return {"deciles": [], "brier": None, "ece": None, "auc": None, "mean_score": None, "base_rate": None}
    order = np.argsort(scores, kind="stable")
    deciles = []
    ece = 0.0
    for number, part in enumerate(np.array_split(order, min(bins, n)), start=1):
        if len(part) == 0:
            continue
        predicted = float(scores[part].mean())
        hits = int(redeemed[part].sum())
        observed = hits / len(part)
        low, high = wilson(hits, len(part))
        ece += len(part) / n * abs(predicted - observed)
        deciles.append({"decile": number, "impressions": int(len(part)), "score_min": float(scores[part].min()),
                        "score_max": float(scores[part].max()), "predicted": predicted, "observed": observed,
                        "ci": [low, high]})
    return {
        "deciles": deciles,
        "brier": float(np.mean((scores - redeemed) ** 2)),
        "ece": ece,
        "auc": auc(scores, redeemed),
        "mean_score": float(scores.mean()),
        "base_rate": float(redeemed.mean()),
    }


def _experiment_labels(table: Any) -> dict[str, tuple[Any, list[str]]]:
    """{experiment: (each impression's variant as a code, -1 when not in it; the variant
    names)}, read from the ``variants`` map column with Arrow kernels (no Python loop over
    rows: a million impressions take milliseconds)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table["variants"].combine_chunks()
    if len(column) == 0:
        return {}
    offsets = column.offsets.to_numpy()
    keys, items = column.keys, column.items
    parents = np.repeat(np.arange(len(column)), np.diff(offsets))
    out: dict[str, tuple[Any, list[str]]] = {}
    for name in pc.unique(keys).to_pylist():
        mask = pc.equal(keys, name).to_numpy(zero_copy_only=False)
        encoded = pc.dictionary_encode(items.filter(pa.array(mask)))
        codes = np.full(len(column), -1, dtype=np.int64)
        codes[parents[mask]] = encoded.indices.to_numpy(zero_copy_only=False)
        out[str(name)] = (codes, [str(v) for v in encoded.dictionary.to_pylist()])
    return out


def _control_of(name: str, names: list[str], experiments: dict[str, Any]) -> str:
    configured = experiments.get(name)
    if configured is not None and configured.control in names:
        return str(configured.control)
    return sorted(names)[0]


def experiment_results(table: Any, experiments: dict[str, Any],
                       labels: dict[str, tuple[Any, list[str]]]) -> dict[str, Any]:
    import numpy as np

    redeemed = table["redeemed"].to_numpy(zero_copy_only=False)
    out: dict[str, Any] = {}
    for name, (codes, present) in sorted(labels.items()):
        configured = experiments.get(name)
        order = [v.name for v in configured.variants] if configured is not None else sorted(present)
        names = [v for v in order if v in present] + sorted(v for v in present if v not in order)
        control = _control_of(name, present, experiments)
        inside = codes >= 0
        shown = np.bincount(codes[inside], minlength=len(present))
        hits = np.bincount(codes[inside], weights=redeemed[inside], minlength=len(present))
        counts = {v: (int(shown[i]), int(hits[i])) for i, v in enumerate(present)}
        n0, x0 = counts[control]
        rows = []
        for variant in names:
            n, x = counts[variant]
            row = _rate_row("variant", variant, n, x)
            row["control"] = variant == control
            if variant != control:
                row.update(two_proportion_test(x, n, x0, n0))
            rows.append(row)
        out[name] = {"control": control, "configured": configured is not None, "variants": rows}
    return out


def _untreated(table: Any, experiments: dict[str, Any], labels: dict[str, tuple[Any, list[str]]]) -> Any:
    """Impressions no experiment treated: in no variant, or in each experiment's control."""
    import numpy as np

    keep = np.ones(table.num_rows, dtype=bool)
    for name, (codes, present) in labels.items():
        control = present.index(_control_of(name, present, experiments))
        keep &= (codes == -1) | (codes == control)
    return keep


def build_report(table: Any, experiments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict (what `--json` prints and the HTML shows)."""
    import pyarrow.compute as pc

    from loyaltylens_core.kernel.campaigns import LABEL_PREFIX
    from loyaltylens_core.kernel.feedback import EVENTS

    everything = table.num_rows
    table = table.filter(pc.is_valid(table["offer_id"]))
    offerless = everything - table.num_rows
    n = table.num_rows
    redeemed = table["redeemed"].to_numpy(zero_copy_only=False)
    scores = table["score"].to_numpy(zero_copy_only=False)
    shown = table["shown_at"]
    experiments = experiments or {}
    # A campaign's labels are read by `report --campaign` (campaign_report.py).
    labels = {k: v for k, v in _experiment_labels(table).items() if not k.startswith(LABEL_PREFIX)}
    untreated = _untreated(table, experiments, labels)
    total = int(redeemed.sum())
    return {
        "impressions": n,
        # Campaign customers recorded with no offer (held out, or treated with none left):
        # in `report --campaign` only.
        "offerless_impressions": offerless,
        "first_shown": pc.min(shown).as_py().isoformat() if n else None,
        "last_shown": pc.max(shown).as_py().isoformat() if n else None,
        "outcomes": {event: int(pc.sum(table[event]).as_py() or 0) for event in EVENTS},
        "redemption": _rate_row("scope", "all", n, total),
        "experiments": experiment_results(table, experiments, labels),
        # A treatment changes the outcome the score predicts: calibrate on the rest.
        "calibration": {**calibration(scores[untreated], redeemed[untreated]),
                        "impressions": int(untreated.sum()), "scope": "control arms and impressions in no experiment"},
        "by_category": _by(table, "offer_category"),
        "by_tier": _by(table, "tier"),
        "by_model_version": _by(table, "model_version"),
        "by_prompt_version": _by(table, "prompt_version"),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal: the numbers a reader acts on, one line each."""
    if not report["impressions"]:
        return "no impressions recorded yet: `loyaltylens run`, `batch` or `serve` record them"
    r = report["redemption"]
    lines = [
        f"{report['impressions']:,} impressions ({report['first_shown'][:10]} .. {report['last_shown'][:10]}), "
        f"redeemed {r['redeemed']:,} = {_pct(r['rate'])} [{_pct(r['ci'][0])}, {_pct(r['ci'][1])}]",
        "outcomes: " + ", ".join(f"{k} {v:,}" for k, v in report["outcomes"].items()),
    ]
    for name, experiment in report["experiments"].items():
        lines.append(f"experiment {name} (control {experiment['control']}):")
        for row in experiment["variants"]:
            text = (f"  {row['variant']:12s} {row['impressions']:>9,} shown  {_pct(row['rate']):>7s} "
                    f"[{_pct(row['ci'][0])}, {_pct(row['ci'][1])}]")
            if not row["control"] and row.get("p_value") is not None:
                lift = "-" if row["lift"] is None else f"{100 * row['lift']:+.1f}%"
                verdict = "significant" if row["significant"] else "not significant"
                text += f"  lift {lift} (p={row['p_value']:.3g}, {verdict})"
            lines.append(text)
    c = report["calibration"]
    auc_text = "-" if c["auc"] is None else f"{c['auc']:.3f}"
    if c["brier"] is None:
        lines.append("calibration: no untreated impressions")  # and no deciles below
    else:
        lines.append(f"calibration ({c['impressions']:,} untreated impressions): Brier {c['brier']:.4f}, "
                     f"ECE {c['ece']:.4f}, AUC {auc_text}, mean score {_pct(c['mean_score'])} vs redeemed "
                     f"{_pct(c['base_rate'])}")
    for d in c["deciles"]:
        lines.append(f"  decile {d['decile']:>2}: predicted {_pct(d['predicted']):>7s}  observed "
                     f"{_pct(d['observed']):>7s} [{_pct(d['ci'][0])}, {_pct(d['ci'][1])}]  ({d['impressions']:,})")
    for title, key, column in (("by category", "by_category", "offer_category"), ("by tier", "by_tier", "tier")):
        lines.append(title + ":")
        for row in report[key]:
            lines.append(f"  {str(row[column]):16s} {row['impressions']:>9,} shown  {_pct(row['rate']):>7s} "
                         f"[{_pct(row['ci'][0])}, {_pct(row['ci'][1])}]")
    if "drift" in report:
        drift = report["drift"]
        lines.append(f"drift {drift['reference']['as_of']} -> {drift['current']['as_of']}: {drift['status']}")
        for name, row in drift["features"].items():
            lines.append(f"  {name:24s} PSI {row['psi']:7.4f}  {row['status']}")
    return "\n".join(lines)
