"""Campaigns on top of the batch and the feedback loop: ``runner`` (``campaign run``, dry
runs, channel exports), ``live`` (the service's per-customer path), ``demo`` (simulated
outcomes with a planted lift). The configuration itself is ``kernel/campaigns.py``."""
