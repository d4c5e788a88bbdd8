"""Upload pacing for metered links: a byte-rate cap and local-time sync windows."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

from outpost.windows import Window, parse_windows

__all__ = ["ByteRate", "Window", "parse_windows", "seconds_until_open"]


def seconds_until_open(windows: list[Window], now: dt.datetime) -> float:
    """0 inside a window (or with none); otherwise seconds until the next one opens."""
    if not windows:
        return 0.0
    minute = now.hour * 60 + now.minute + now.second / 60
    waits = []
    for start, end in windows:
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if inside:
            return 0.0
        waits.append(((start - minute) % 1440) * 60)
    return min(waits)


class ByteRate:
    """A token bucket over bytes: sends wait so that the average stays under the cap."""

    def __init__(self, bytes_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = bytes_per_s
        self._clock = clock
        self._tokens = float(bytes_per_s)  # one second's worth of burst
        self._updated = clock()

    async def take(self, size: int) -> None:
        """Wait until `size` bytes may go (no wait when uncapped)."""
        if not self._rate:
            return
        now = self._clock()
        self._tokens = min(float(self._rate), self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._tokens -= size
        if self._tokens < 0:
            # Pacing, not synchronisation: the wait is the cap itself.
            await asyncio.sleep(-self._tokens / self._rate)
