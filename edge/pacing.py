"""Upload pacing for metered links: a byte-rate cap and local-time sync windows."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

from outpost.aio import wait_event
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
        self._retuned = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # of the send that waits

    def retune(self, bytes_per_s: int) -> None:
        """A new cap (0: none), for the send waiting now too: a cap of 1 byte/s set by
        mistake put a batch to sleep for hours, and lifting it changed nothing until
        then. Callable from any thread (a policy is applied from one)."""
        self._rate = bytes_per_s
        self._tokens = min(self._tokens, float(bytes_per_s))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._retuned.set)

    async def take(self, size: int) -> None:
        """Wait until `size` bytes may go (no wait when uncapped)."""
        if not self._rate:
            return
        self._refill()
        self._tokens -= size
        self._loop = asyncio.get_running_loop()
        while self._tokens < 0 and self._rate:
            # Pacing, not synchronisation: the wait is the cap itself, cut short by a
            # new cap, against which the bytes still owed are then measured.
            self._retuned.clear()
            await wait_event(self._retuned, -self._tokens / self._rate)
            self._refill()
        if not self._rate:
            self._tokens = 0.0  # uncapped: nothing owed if a cap comes back

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self._rate), self._tokens + (now - self._updated) * self._rate)
        self._updated = now
