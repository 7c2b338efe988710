"""The reliability plot of a model card: predicted vs observed redemption rate per score bin."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_reliability(card: dict[str, Any], path: Path) -> None:
    """Write ``path`` (PNG): the calibrated model's reliability on the headline evaluation
    window, the diagonal, and the bin sizes. matplotlib's Agg backend: no display needed."""
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
