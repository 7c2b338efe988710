"""Campaigns on Prefect: ``run_due_campaigns`` is a flow that lists the campaigns running on a
day and runs each as a task with retries, through the ``loyaltylens`` command; ``deployment``
schedules it daily. ``campaign run`` is idempotent and resumable, so a retry after a crash
finishes the run and a second trigger on the same day does nothing."""

from loyaltylens_prefect.flows import deployment, due_campaigns, run_campaign, run_due_campaigns

__all__ = ["deployment", "due_campaigns", "run_campaign", "run_due_campaigns"]
