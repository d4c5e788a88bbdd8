"""Capped, jittered exponential back-off for reconnect loops."""

from __future__ import annotations

import random


def delay(attempt: int, *, cap: float, base: float = 1.5) -> float:
    """Return the wait before retry number `attempt` (0-based), in seconds.

    "Full jitter": uniform in [0, min(cap, base**attempt)], so a fleet that lost its
    broker at the same instant does not come back in lock-step.
    """
    ceiling = min(cap, base ** min(attempt, 30))
    return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not cryptography
