"""``loyaltylens report --campaign NAME``: did the campaign work?

Reads the campaign's impressions (tagged ``campaign:NAME`` = treated | holdout by
``campaign run``) with their outcomes and compares redemption of the treated customers with
the held-out ones, who were sent nothing: the difference is the campaign's incremental
effect, with a 95% interval (two-proportion test), overall, per channel and per offer
(each offer's treated customers against the whole holdout). Cost is the summed ``value`` of
the offers redeemed; cost per incremental redemption divides it by the redemptions the
campaign added (treated redemptions minus what the holdout rate predicts for as many
customers). A customer counts once per run (a retried live send is one customer).
"""

from __future__ import annotations

from typing import Any, Callable

from loyaltylens_core.kernel.campaigns import ARM_KEY, CHANNEL_KEY, RUN_KEY
from loyaltylens_core.loop.report import _experiment_labels, _pct, _rate_row, two_proportion_test


def build_campaign_report(table: Any, campaign: str, values: Callable[[list[str]], dict[str, float]],
                          run: str | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict; ``values(offer_ids)`` gives offers' values."""
    import numpy as np

    labels = _experiment_labels(table)
    arms = labels.get(ARM_KEY.format(campaign))
    out: dict[str, Any] = {"campaign": campaign, "run": run, "impressions": 0}
    if arms is None:
        return out
    size = table.num_rows
    inside = arms[0] >= 0
    if run is not None:
        inside &= _is(labels.get(RUN_KEY.format(campaign)), run, size)
    redeemed = table["redeemed"].to_numpy(zero_copy_only=False).astype(bool)
    inside, redeemed = _once_per_customer_and_run(table, labels.get(RUN_KEY.format(campaign)), inside, redeemed)
    treated = inside & _is(arms, "treated", size)
    holdout = inside & _is(arms, "holdout", size)
    n1, x1 = int(treated.sum()), int(redeemed[treated].sum())
    n0, x0 = int(holdout.sum()), int(redeemed[holdout].sum())
    offers = np.array(table["offer_id"].to_pylist(), dtype=object)
    redeemed_offers = [o for o in offers[treated & redeemed] if o is not None]
    price = values(sorted(set(redeemed_offers)))
    cost = float(sum(price.get(o, 0.0) for o in redeemed_offers))
    incremental = x1 - (x0 / n0) * n1 if n0 else None
    out.update({
        "impressions": int(inside.sum()),
        "runs": sorted(set(_values_of(labels.get(RUN_KEY.format(campaign)), inside))),
        "treated": _rate_row("arm", "treated", n1, x1), "holdout": _rate_row("arm", "holdout", n0, x0),
        "effect": two_proportion_test(x1, n1, x0, n0),
        "cost": cost, "incremental_redemptions": incremental,
        "cost_per_incremental_redemption": cost / incremental if incremental and incremental > 0 else None,
        "by_channel": _by_channel(labels.get(CHANNEL_KEY.format(campaign)), treated, holdout, redeemed),
        "by_offer": _by_offer(offers, treated, redeemed, n0, x0, price),
    })
    return out


def _once_per_customer_and_run(table: Any, runs: tuple[Any, list[str]] | None, inside: Any,
                               redeemed: Any) -> tuple[Any, Any]:
    """One row per customer and run (a send retried on the live path is one customer, not
    two): the first impression, redeemed when any of theirs was."""
    import numpy as np

    customers = table["customer_id"].to_pylist()
    run_codes = runs[0] if runs is not None else np.zeros(len(customers), dtype=np.int64)
    first: dict[tuple[str, int], int] = {}
    keep = np.zeros(len(customers), dtype=bool)
    hit = redeemed.copy()
    for i in np.flatnonzero(inside).tolist():
        j = first.setdefault((customers[i], int(run_codes[i])), i)
        if j == i:
            keep[i] = True
        elif redeemed[i]:
            hit[j] = True
    return keep, hit


def _is(labels: tuple[Any, list[str]] | None, value: str, size: int) -> Any:
    """Which impressions carry ``value`` under one variants key."""
    import numpy as np

    if labels is None or value not in labels[1]:
        return np.zeros(size, dtype=bool)
    return labels[0] == labels[1].index(value)


def _values_of(labels: tuple[Any, list[str]] | None, mask: Any) -> list[str]:
    if labels is None:
        return []
    codes, names = labels
    return [names[c] for c in set(codes[mask].tolist()) if c >= 0]


def _by_channel(channels: tuple[Any, list[str]] | None, treated: Any, holdout: Any, redeemed: Any) -> list[dict[str, Any]]:
    rows = []
    for channel in sorted(_values_of(channels, treated | holdout)):
        on = _is(channels, channel, len(treated))
        t, h = treated & on, holdout & on
        n1, x1, n0, x0 = int(t.sum()), int(redeemed[t].sum()), int(h.sum()), int(redeemed[h].sum())
        rows.append({"channel": channel, "treated": _rate_row("arm", "treated", n1, x1),
                     "holdout": _rate_row("arm", "holdout", n0, x0), **two_proportion_test(x1, n1, x0, n0)})
    return rows


def _by_offer(offers: Any, treated: Any, redeemed: Any, n0: int, x0: int, price: dict[str, float]) -> list[dict[str, Any]]:
    import collections

    shown = collections.Counter(o for o in offers[treated] if o is not None)
    hits = collections.Counter(o for o in offers[treated & redeemed] if o is not None)
    rows = []
    for offer, n in shown.most_common():
        row = _rate_row("offer_id", offer, n, hits[offer])
        row.update(two_proportion_test(hits[offer], n, x0, n0))
        row["cost"] = hits[offer] * price.get(offer, 0.0)
        rows.append(row)
    return rows


def render_campaign_text(report: dict[str, Any]) -> str:
    if not report["impressions"]:
        return (f"no impressions of campaign {report['campaign']!r} recorded yet: "
                f"`loyaltylens campaign run {report['campaign']}` records them")
    t, h, e = report["treated"], report["holdout"], report["effect"]
    lines = [f"campaign {report['campaign']} ({', '.join(report['runs'])}): {report['impressions']:,} customers"]
    for row in (t, h):
        lines.append(f"  {row['arm']:8s} {row['impressions']:>8,}  redeemed {row['redeemed']:>6,} = {_pct(row['rate']):>7s} "
                     f"[{_pct(row['ci'][0])}, {_pct(row['ci'][1])}]")
    lines.append("  " + _effect_text(e))
    per = report["cost_per_incremental_redemption"]
    lines.append(f"  cost {report['cost']:,.2f} (value of the offers redeemed); incremental redemptions "
                 f"{_number(report['incremental_redemptions'])}; cost per incremental redemption "
                 f"{'-' if per is None else f'{per:,.2f}'}")
    lines.append("by channel:")
    for row in report["by_channel"]:
        lines.append(f"  {row['channel']:8s} treated {_pct(row['treated']['rate']):>7s} ({row['treated']['impressions']:,}) "
                     f"vs holdout {_pct(row['holdout']['rate']):>7s} ({row['holdout']['impressions']:,})  {_effect_text(row)}")
    lines.append("by offer (vs the whole holdout):")
    for row in report["by_offer"]:
        lines.append(f"  {str(row['offer_id']):10s} {row['impressions']:>7,} shown {_pct(row['rate']):>7s} "
                     f"[{_pct(row['ci'][0])}, {_pct(row['ci'][1])}]  {_effect_text(row)}")
    return "\n".join(lines)


def _effect_text(effect: dict[str, Any]) -> str:
    if effect.get("difference") is None:
        return "effect: - (no holdout to compare with)"
    low, high = effect["difference_ci"]
    verdict = "significant" if effect["significant"] else "not significant"
    return (f"effect {100 * effect['difference']:+.2f} pts [{100 * low:+.2f}, {100 * high:+.2f}] "
            f"(p={effect['p_value']:.3g}, {verdict})")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
