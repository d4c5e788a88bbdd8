"""Capped, jittered exponential back-off for reconnect loops."""

from __future__ import annotations

import random


def delay(attempt: int, *, cap: float, base: float = 1.5) -> float:
    """Return the wait before retry number `attempt` (0-based), in seconds.

    "Full jitter": uniform in [0, min(cap, base**attempt)], so a fleet that lost its
    broker at the same instant does not come back in lock-step.
    """
    return random.uniform(0.0, _ceiling(attempt, cap, base))  # noqa: S311 - jitter, not cryptography


def _ceiling(attempt: int, cap: float, base: float) -> float:
    return min(cap, base ** min(attempt, 30))


class Reconnect:
    """The waits of one link's reconnect loop, drawn from its own seeded generator.

    The first retry of an outage is uniform in [0, spread]: 10,000 devices that lost one
    broker at once come back over `spread` seconds, not within `delay`'s first second.
    Later retries are full jitter in [0, min(cap, max(spread, base**attempt))]. The floor
    at `spread` keeps every round, not just the first, at about 2N/spread attempts per
    second; without it rounds 1-3 would draw from 1.5-3.4 s and the fleet would hammer a
    broker still starting at several times that rate. With spread 0 the waits are
    exactly `delay`'s.

    Seeded with the device id, one device's waits are reproducible (tests) while devices
    stay de-correlated. Pure: the caller sleeps; nothing here does I/O.
    """

    def __init__(
        self, *, cap: float, spread: float = 0.0, seed: str | None = None, base: float = 1.5
    ) -> None:
        if not cap > 0:
            raise ValueError(f"the back-off cap must be positive, got {cap}")
        if not spread >= 0:
            raise ValueError(f"the reconnect spread must be 0 or more, got {spread}")
        if not base > 1:
            raise ValueError(f"the back-off base must be more than 1, got {base}")
        self.cap = cap
        self.spread = min(spread, cap)  # no wait exceeds the cap, the first one included
        self.base = base
        self.attempt = 0  # retries since the link was last up
        self._random = random.Random(seed)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        """Start a new outage: the link came up (or a refusal hook did its own waiting)."""
        self.attempt = 0

    def next_delay(self) -> float:
        """Return the wait before the next attempt, in seconds, and count that attempt."""
        attempt = self.attempt
        self.attempt += 1
        if attempt == 0 and self.spread > 0:
            return self._random.uniform(0.0, self.spread)
        ceiling = max(self.spread, _ceiling(attempt, self.cap, self.base))
        return self._random.uniform(0.0, ceiling)
