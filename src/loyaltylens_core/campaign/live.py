"""The live path of a campaign: ``GET /v1/campaigns/{name}/offer/{customer_id}`` on
``serve``, for campaign tools that fetch content per customer at send time (Braze
Connected Content). The same audience, holdout and channel rules as ``campaign run``; the
decision is counted against the same caps and frequency rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from loyaltylens_core.campaign.runner import record_offerless
from loyaltylens_core.kernel.campaigns import ARM_KEY, CHANNEL_KEY, RUN_KEY, Campaign
from loyaltylens_core.kernel.contracts import CustomerFeatures

if TYPE_CHECKING:
    from loyaltylens_core.kernel.pipeline import Pipeline

def run_id_for_day(campaign: Campaign, day: dt.date) -> str:
    """The live path's run of a day: repeated calls for one customer that day count once
    against the frequency rule (a retried send), a batch run of the same group does not."""
    return f"{campaign.name}-live-{day:%Y%m%d}"


def arm_of(pipeline: "Pipeline", campaign: Campaign, customer_id: str) -> tuple[str, CustomerFeatures]:
    """``treated``, ``holdout`` or ``not_in_audience`` for one customer, with their features
    (an unknown customer raises the feature store's not-found error)."""
    features = pipeline.read_known([customer_id])
    if customer_id in features[1]:
        raise features[1][customer_id]
    mine = features[0][0]
    if campaign.audience_ids is not None and customer_id not in _ids_of(campaign.audience_ids):
        return "not_in_audience", mine
    if not campaign.selects()(mine):
        return "not_in_audience", mine
    return campaign.arm(customer_id), mine


_IDS: dict[Path, frozenset[str]] = {}


def _ids_of(path: Path) -> frozenset[str]:
    """An audience ids file, read once per process."""
    if path not in _IDS:
        from loyaltylens_core.batch import read_ids_file

        _IDS[path] = frozenset(read_ids_file(path))
    return _IDS[path]


def tags_of(campaign: Campaign, run_id: str, arm: str, features: CustomerFeatures) -> dict[str, str]:
    return {ARM_KEY.format(campaign.name): arm, CHANNEL_KEY.format(campaign.name): campaign.channel_for(
        features.channel_preference), RUN_KEY.format(campaign.name): run_id}


def record_sent_nothing(pipeline: "Pipeline", campaign: Campaign, run_id: str, arm: str,
                        features: CustomerFeatures) -> None:
    """A customer the live path sent nothing (held out, or treated with nothing left to
    offer), recorded once per day's run, from the features already read."""
    customer = features.customer_id
    record_offerless(pipeline, campaign, run_id, [features], {customer: arm},
                     {customer: campaign.channel_for(features.channel_preference)})
