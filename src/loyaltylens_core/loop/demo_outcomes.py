"""Demo outcomes that close the loop: what the demo customers did with the offers
LoyaltyLens handed them, drawn from the demo's hidden ground truth.

A customer redeems with the generator's true probability of a redemption in the 30 days
after the served snapshot (``true_probability``: what the propensity model is trained to
predict), so a well-trained model shows as calibrated. The built-in experiment
``demo_reminder`` plants a known effect: customers in its ``reminder`` variant (half of
them) redeem with ``REMINDER_LIFT`` times that probability, so `loyaltylens report` has
a real lift to find. Views, clicks, dismissals and ratings follow from the redemption.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.kernel.experiments import Experiment, Variant

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline

EXPERIMENT = "demo_reminder"
REMINDER_LIFT = 1.25
HORIZON_DAYS = 30


def experiment() -> Experiment:
    """Half the customers get a (simulated) reminder; the other half are the control.
    The variants pin nothing: the app acts on the variant the result carries."""
    return Experiment(EXPERIMENT, (Variant("control", 0.5), Variant("reminder", 0.5)), "control")


def truth_of(impressions: Any, demo: Any, as_of: dt.date) -> Any:
    """Each impression's customer's true redemption probability (the demo's ground truth)."""
    import numpy as np

    from loyaltylens_core.sdk.demo import true_probability

    ids: Sequence[str] = impressions["customer_id"].to_pylist()
    truth = true_probability(demo, ids, [as_of] * len(ids), HORIZON_DAYS, continued=True)
    if truth is None:
        raise ValueError("the demo ground truth (truth.npz) is missing: rebuild the demo data with `loyaltylens seed`")
    return np.asarray(truth)


def simulate(
    impressions: Any, demo: Any, as_of: dt.date, seed: int, lift: float = REMINDER_LIFT, treated: Any = None,
) -> Any:
    """Outcome rows (``impressions.OUTCOME_COLUMNS``) for these impressions; ``treated``
    (default: the demo experiment's reminder variant) redeem ``lift`` times as often."""
    import numpy as np
    import pyarrow as pa

    from loyaltylens_core.kernel.feedback import outcome_schema

    ids: Sequence[str] = impressions["customer_id"].to_pylist()
    truth = truth_of(impressions, demo, as_of)
    if treated is None:
        treated = np.array([dict(v).get(EXPERIMENT) == "reminder" for v in impressions["variants"].to_pylist()])
    p = np.clip(truth * np.where(treated, lift, 1.0), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    redeemed = rng.random(len(ids)) < p
    viewed = redeemed | (rng.random(len(ids)) < 0.7)
    clicked = redeemed | (viewed & (rng.random(len(ids)) < 0.3))
    dismissed = viewed & ~clicked & (rng.random(len(ids)) < 0.5)
    shown = impressions["shown_at"].to_pylist()
    impression_ids = impressions["impression_id"].to_pylist()
    rows: dict[str, list[Any]] = {"impression_id": [], "event": [], "rating": [], "at": []}
    for event, mask, delay_h in (("viewed", viewed, 1), ("clicked", clicked, 2), ("redeemed", redeemed, 48),
                                 ("dismissed", dismissed, 1)):
        for i in np.flatnonzero(mask):
            rows["impression_id"].append(impression_ids[i])
            rows["event"].append(event)
            rows["rating"].append(int(rng.integers(3, 6)) if event == "redeemed" else None)
            rows["at"].append(shown[i] + dt.timedelta(hours=delay_h))
    return pa.table(rows, schema=outcome_schema())


def close_the_loop(pipeline: "Pipeline", customers: int | None = None) -> dict[str, Any]:
    """`loyaltylens feedback demo`: hand the first ``customers`` demo customers (all: None)
    an offer through ``pipeline``, recording the impressions under the demo experiment,
    draw what they did from the demo's ground truth, write it as an outcomes file in the
    data dir and import it. Returns the summary the command prints."""
    import pyarrow.parquet as pq

    from loyaltylens_core.kernel.feedback import from_results
    from loyaltylens_core.loop.impressions import recorder_of
    from loyaltylens_core.sdk.demo import demo_data_of

    recorder = recorder_of(pipeline)
    if recorder is None:
        raise UsageError("impressions are not recorded (record_impressions = false)",
                         "set record_impressions = true in loyaltylens.toml")
    pipeline.config.experiments.setdefault(EXPERIMENT, experiment())
    recorder.source = "demo"
    pipeline.prepare()
    ids = list(pipeline.component("feature_store").customer_ids())[:customers]
    results: list[Any] = []
    with pipeline.progress.task("Offers for demo customers", total=len(ids)) as advance:
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            results.extend(r for r in pipeline.run_many(chunk) if not isinstance(r, Exception))
            advance(len(chunk))
    recorder.flush()
    if not results:
        raise UsageError("no demo customer got an offer", "check `loyaltylens run C001`")
    core = pipeline.config.core
    demo = demo_data_of(core, pipeline.progress)
    impressions = from_results(results, "demo")
    try:
        outcomes = simulate(impressions, demo, results[0].features.as_of, seed=core.seed)
    except ValueError as exc:
        raise UsageError(str(exc), "feedback demo works on the demo data only") from None
    path, summary = import_outcomes(pipeline, outcomes, f"outcomes-{impressions['shown_at'][0].as_py():%Y%m%dT%H%M%S}")
    return {"customers": len(ids), "impressions": impressions.num_rows, "outcomes_file": str(path), **summary}


def import_outcomes(pipeline: "Pipeline", outcomes: Any, stem: str) -> tuple[Path, dict[str, Any]]:
    """Outcomes written as a file in the data dir, then imported the way a user's are."""
    import pyarrow.parquet as pq

    from loyaltylens_core.loop.outcomes import import_file

    folder = Path(pipeline.config.core.data_dir) / "demo-outcomes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.parquet"
    pq.write_table(outcomes.rename_columns(["impression_id", "event", "rating", "time"]), path)
    summary = import_file(pipeline.component("feedback_store"), path)
    return path, {k: v for k, v in summary.to_dict().items() if k in ("rows", "added", "duplicates", "rejected")}
