"""``loyaltylens feedback demo --campaign NAME``: what a demo campaign's customers did.

Everyone redeems with the demo's true probability; treated customers who were sent an offer
with ``lift`` times it, so ``report --campaign`` has a known effect to find."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.loop.demo_outcomes import import_outcomes, simulate, truth_of

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline

# Customers sent an offer redeem this many times as often.
CAMPAIGN_LIFT = 1.5


def campaign_outcomes(pipeline: "Pipeline", name: str, lift: float = CAMPAIGN_LIFT) -> dict[str, Any]:
    """The outcomes of the campaign's latest run, imported. Returns the planted effect
    (``true_difference``: the expected treated minus holdout redemption rate of these very
    customers) with the import summary."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from loyaltylens_core.kernel.campaigns import ARM_KEY, RUN_KEY
    from loyaltylens_core.campaign.runner import runs_of
    from loyaltylens_core.sdk.demo import demo_data_of

    campaign = pipeline.config.campaign(name)
    runs = [r for r in runs_of(pipeline.config.core.data_dir, campaign) if r.get("status") == "done"]
    if not runs:
        raise UsageError(f"campaign {name!r} has no finished run", f"run it first: loyaltylens campaign run {name}")
    run = runs[-1]["run_id"]
    table = pipeline.component("feedback_store").impressions_with_outcomes()
    runs = pc.map_lookup(table["variants"], pa.scalar(RUN_KEY.format(name)), "first")  # column-wise, no dict per row
    impressions = table.filter(pc.fill_null(pc.equal(runs, run), False))
    arms = np.asarray(pc.map_lookup(impressions["variants"], pa.scalar(ARM_KEY.format(name)), "first")
                      .to_numpy(zero_copy_only=False), dtype=object)
    treated = (arms == "treated") & pc.is_valid(impressions["offer_id"]).to_numpy(zero_copy_only=False)
    core = pipeline.config.core
    as_of = pipeline.read_known(impressions["customer_id"].to_pylist()[:1])[0][0].as_of
    demo = demo_data_of(core, pipeline.progress)
    try:
        truth = truth_of(impressions, demo, as_of)
        outcomes = simulate(impressions, demo, as_of, seed=core.seed, lift=lift, treated=treated)
    except ValueError as exc:
        raise UsageError(str(exc), "feedback demo works on the demo data only") from None
    expected = np.clip(truth * np.where(treated, lift, 1.0), 0.0, 1.0)
    in_treated, in_holdout = arms == "treated", arms == "holdout"
    path, summary = import_outcomes(pipeline, outcomes, f"campaign-{run}")
    return {
        "campaign": name, "run": run, "impressions": impressions.num_rows, "lift": lift,
        "true_treated_rate": float(expected[in_treated].mean()) if in_treated.any() else None,
        "true_holdout_rate": float(expected[in_holdout].mean()) if in_holdout.any() else None,
        "true_difference": float(expected[in_treated].mean() - expected[in_holdout].mean())
        if in_treated.any() and in_holdout.any() else None,
        "outcomes_file": str(path), **summary,
    }
