"""The HTML form of ``loyaltylens report``: one self-contained file, plots as inlined PNGs
(matplotlib, Agg backend: no display needed), so it can be mailed or archived as is."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from loyaltylens_core.loop.report import _pct


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _calibration_plot(calibration: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4.2))
    deciles = calibration["deciles"]
    predicted = [d["predicted"] for d in deciles]
    observed = [d["observed"] for d in deciles]
    errors = [[o - d["ci"][0] for o, d in zip(observed, deciles)], [d["ci"][1] - o for o, d in zip(observed, deciles)]]
    top = max([*predicted, *(d["ci"][1] for d in deciles), 0.05]) * 1.05
    axis.plot([0, top], [0, top], color="#999999", linestyle="--", label="perfect calibration")
    axis.errorbar(predicted, observed, yerr=errors, marker="o", capsize=3, label="score decile (95% CI)")
    axis.set_xlabel("mean predicted propensity")
    axis.set_ylabel("observed redemption rate")
    axis.set_title("Calibration")
    axis.legend(loc="upper left")
    return _png(figure)


def _rate_bars(rows: list[dict[str, Any]], key: str, title: str) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    names = [str(r[key]) for r in rows]
    rates = [r["rate"] for r in rows]
    # Wilson bounds at a rate of 0 or 1 can sit a rounding error inside it: never below zero.
    errors = [[max(0.0, r["rate"] - r["ci"][0]) for r in rows], [max(0.0, r["ci"][1] - r["rate"]) for r in rows]]
    axis.bar(names, rates, yerr=errors, capsize=4, color="#4C72B0")
    axis.set_ylabel("redemption rate (95% CI)")
    axis.set_title(title)
    axis.tick_params(axis="x", rotation=30)
    return _png(figure)


def _drift_plot(drift: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    names = list(drift["features"])
    values = [drift["features"][n]["psi"] for n in names]
    colours = {"ok": "#55A868", "warning": "#DD8452", "critical": "#C44E52"}
    figure, axis = plt.subplots(figsize=(6, 3.4))
    axis.barh(names, values, color=[colours[drift["features"][n]["status"]] for n in names])
    for label, value in drift["thresholds"].items():
        axis.axvline(value, color="#555555", linestyle="--", linewidth=1)
        axis.text(value, len(names) - 0.4, f" {label}", fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("PSI")
    axis.set_title(f"Drift {drift['reference']['as_of']} → {drift['current']['as_of']}")
    return _png(figure)


def _table(rows: list[dict[str, Any]], key: str, extra: tuple[str, ...] = ()) -> str:
    labels = {"p_value": "p-value", "lift": "lift vs control", "significant": "significant (p < 0.05)"}
    head = "".join(f"<th>{html.escape(labels.get(h, h))}</th>"
                   for h in (key, "impressions", "redeemed", "rate", "95% CI", *extra))
    body = []
    for r in rows:
        cells = [html.escape(str(r[key])), f"{r['impressions']:,}", f"{r['redeemed']:,}", _pct(r["rate"]),
                 f"{_pct(r['ci'][0])} – {_pct(r['ci'][1])}"]
        for column in extra:
            value = r.get(column)
            if column == "lift":
                cells.append("-" if value is None else f"{100 * value:+.1f}%")
            elif column == "p_value":
                cells.append("-" if value is None else f"{value:.3g}")
            elif column == "significant":
                cells.append("" if r.get("control") else ("yes" if value else "no"))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
          "img{display:block;margin:1em 0}")


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _headless_plots() -> None:
    """matplotlib draws to PNG without a display (Agg), whatever backend it would pick."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")


def render_html(report: dict[str, Any]) -> str:
    _headless_plots()
    parts = ["<h1>LoyaltyLens report</h1>"]
    if not report["impressions"]:
        parts.append("<p>No impressions recorded yet.</p>")
    else:
        r = report["redemption"]
        parts.append(
            f"<p id='summary'>{report['impressions']:,} impressions from {html.escape(report['first_shown'][:10])} "
            f"to {html.escape(report['last_shown'][:10])}; redeemed {r['redeemed']:,} = {_pct(r['rate'])} "
            f"(95% CI {_pct(r['ci'][0])} – {_pct(r['ci'][1])}).</p>"
        )
        for name, experiment in report["experiments"].items():
            parts.append(f"<h2>Experiment {html.escape(name)} <small>(control: {html.escape(experiment['control'])})</small></h2>")
            parts.append(_table(experiment["variants"], "variant", ("lift", "p_value", "significant")))
            parts.append(f"<img alt='redemption by variant of {html.escape(name)}' "
                         f"src='data:image/png;base64,{_rate_bars(experiment['variants'], 'variant', name)}'>")
        c = report["calibration"]
        auc = "-" if c["auc"] is None else f"{c['auc']:.3f}"
        parts.append("<h2>Propensity calibration</h2>")
        if c["brier"] is None:
            parts.append("<p>No untreated impressions to calibrate on.</p>")
        else:
            parts.append(f"<p>On {c['impressions']:,} impressions no experiment treated: Brier score "
                         f"{c['brier']:.4f}, expected calibration error {c['ece']:.4f}, AUC {auc}.</p>")
            parts.append(f"<img alt='calibration plot' src='data:image/png;base64,{_calibration_plot(c)}'>")
        for title, key, column in (("By offer category", "by_category", "offer_category"), ("By tier", "by_tier", "tier")):
            parts.append(f"<h2>{title}</h2>")
            parts.append(_table(report[key], column))
            parts.append(f"<img alt='{title.lower()}' src='data:image/png;base64,{_rate_bars(report[key], column, title)}'>")
    if "drift" in report:
        drift = report["drift"]
        parts.append(f"<h2>Drift <small>({html.escape(drift['status'])})</small></h2>")
        rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{r['psi']:.4f}</td><td>{html.escape(r['status'])}</td></tr>"
                       for n, r in drift["features"].items())
        parts.append(f"<table><thead><tr><th>feature</th><th>PSI</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>")
        parts.append(f"<img alt='drift by feature' src='data:image/png;base64,{_drift_plot(drift)}'>")
    return _page("LoyaltyLens report", parts)


def write_html(report: dict[str, Any], path: Path) -> None:
    """Written beside its name and renamed: a reader never sees half a report."""
    from loyaltylens_core.util.atomic import write_bytes

    write_bytes(path, render_html(report).encode("utf-8"))


def _arm_table(rows: list[dict[str, Any]], key: str) -> str:
    """Treated vs holdout rows (per channel or per offer) with the effect's interval."""
    head = "".join(f"<th>{h}</th>" for h in (key, "treated", "rate", "holdout", "rate", "effect (pts)", "95% CI", "p-value"))
    body = []
    for r in rows:
        t = r.get("treated") or r
        h = r.get("holdout")
        interval = r["difference_ci"]
        cells = [html.escape(str(r[key])), f"{t['impressions']:,}", _pct(t["rate"]),
                 f"{h['impressions']:,}" if h else "all", _pct(h["rate"]) if h else "",
                 "-" if r["difference"] is None else f"{100 * r['difference']:+.2f}",
                 "-" if interval is None else f"{100 * interval[0]:+.2f} – {100 * interval[1]:+.2f}",
                 "-" if r["p_value"] is None else f"{r['p_value']:.3g}"]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_campaign_html(report: dict[str, Any]) -> str:
    """``report --campaign --html``: treated vs holdout with intervals, by channel and offer."""
    _headless_plots()
    name = html.escape(report["campaign"])
    parts = [f"<h1>Campaign {name}</h1>"]
    if not report["impressions"]:
        parts.append("<p>No impressions of this campaign recorded yet.</p>")
    else:
        e = report["effect"]
        effect = ("no holdout to compare with" if e["difference"] is None else
                  f"effect {100 * e['difference']:+.2f} points (95% CI {100 * e['difference_ci'][0]:+.2f} – "
                  f"{100 * e['difference_ci'][1]:+.2f}, p = {e['p_value']:.3g})")
        per = report["cost_per_incremental_redemption"]
        parts.append(f"<p id='summary'>{report['impressions']:,} customers in runs "
                     f"{html.escape(', '.join(report['runs']))}: treated {_pct(report['treated']['rate'])}, "
                     f"holdout {_pct(report['holdout']['rate'])}; {effect}. Cost {report['cost']:,.2f}; cost per "
                     f"incremental redemption {'-' if per is None else f'{per:,.2f}'}.</p>")
        arms = [report["treated"], report["holdout"]]
        parts.append(_table(arms, "arm"))
        parts.append(f"<img alt='redemption treated vs holdout' "
                     f"src='data:image/png;base64,{_rate_bars(arms, 'arm', 'Treated vs holdout')}'>")
        parts.append("<h2>By channel</h2>" + _arm_table(report["by_channel"], "channel"))
        parts.append("<h2>By offer <small>(against the whole holdout)</small></h2>" + _arm_table(report["by_offer"], "offer_id"))
        if report["by_offer"]:
            parts.append(f"<img alt='redemption by offer' "
                         f"src='data:image/png;base64,{_rate_bars(report['by_offer'][:15], 'offer_id', 'By offer')}'>")
    return _page(f"Campaign {name}", parts)


def write_campaign_html(report: dict[str, Any], path: Path) -> None:
    from loyaltylens_core.util.atomic import write_bytes

    write_bytes(path, render_campaign_html(report).encode("utf-8"))
