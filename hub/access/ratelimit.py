"""Token buckets keyed by caller: bursts allowed, sustained floods answered with 429.

In memory and per hub replica: the limit is approximate across replicas, which is what a
flood guard needs (it is not a quota)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 10_000  # forget the idlest callers beyond this, so the map stays bounded


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows `burst` requests at once and `rate` per second after that, per key."""

    def __init__(
        self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Take `cost` from the key's bucket if it holds that much; say whether it did."""
        bucket = self._refill(key)
        if bucket.tokens < cost:
            return False
        bucket.tokens -= cost
        return True

    def retry_after(self, key: str) -> int:
        """Whole seconds until the key may try again."""
        missing = max(0.0, 1.0 - self._refill(key).tokens)
        return max(1, int(missing / self._rate + 0.999))

    def _refill(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                idlest = min(self._buckets, key=lambda k: self._buckets[k].updated)
                del self._buckets[idlest]
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        return bucket
