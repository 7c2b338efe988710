"""A token bucket per API key for requests that call an LLM generator.

Each worker process keeps its own buckets, so the service divides the configured rate
and burst by the number of workers: together they allow what the settings say.
"""

from __future__ import annotations

import math
import time
from typing import Callable


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = max(1.0, burst)
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def take(self, key: str, cost: float = 1.0) -> float:
        """0 if the request may go ahead (and pay ``cost``), else seconds until it may."""
        now = self.clock()
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if cost > self.burst:
            # More than the bucket can ever hold: say when a full bucket would cover it.
            self._state[key] = (tokens, now)
            return max(0.001, (cost - tokens) / self.rate)
        if tokens >= cost:
            self._state[key] = (tokens - cost, now)
            return 0.0
        self._state[key] = (tokens, now)
        return (cost - tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
