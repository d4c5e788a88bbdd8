"""The liveness sweep, run by the leader: devices whose heartbeats stopped without a last
will (a cut link) are marked offline; now and then each device's event log is trimmed.

Silence is judged on the wall clock, as the stamps in the database are (any replica
writes them, and only the wall clock is shared). A step of the hub's own clock (NTP at a
boot without a real-time clock, a virtual machine resumed, a clock set by hand) moves
`now` and not the stamps: a step forward made every online device look silent at once,
so the whole fleet went offline (events, sinks, alerts) and came back at its next
heartbeats. A step is noticed against the monotonic clock, and the sweep then waits
until every online device has had the time to heartbeat again, so that stamps and `now`
are on the same clock. A step back keeps a device that died just before it online for
the step's length more: its stamp lies in the new clock's future.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hub.store import HubStore, presence

logger = logging.getLogger(__name__)

PERIOD_S = 1.0
EVENT_PRUNE_PERIOD_S = 600.0  # device event logs trimmed (store/events.py) this often
STEP_TOLERANCE_S = 5.0  # a wall clock moved this much against the monotonic one stepped


class ClockSteps:
    """Steps of the wall clock against the monotonic one since the last look. A slewing
    NTP moves it by well under a millisecond a second: never a step."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        steady: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._steady = steady
        self._offset = wall() - steady()

    def now(self) -> float:
        """The wall clock's time."""
        return self._wall()

    def stepped(self) -> float:
        """How far the wall clock jumped since the last call (0.0: within tolerance)."""
        offset = self._wall() - self._steady()
        step, self._offset = offset - self._offset, offset
        return step if abs(step) > STEP_TOLERANCE_S else 0.0


async def sweep(store: HubStore, intervals: float, clock: ClockSteps | None = None) -> None:
    """Sweep for silent devices every `PERIOD_S` (as the leader, on its fenced `store`):
    offline after `intervals` of their heartbeat intervals without one."""
    clock = clock or ClockSteps()
    pruned_at = time.monotonic()
    paused_until = 0.0
    while True:
        await asyncio.sleep(PERIOD_S)
        if time.monotonic() - pruned_at > EVENT_PRUNE_PERIOD_S:
            pruned_at = time.monotonic()
            try:
                await store.prune_device_events()
            except Exception as exc:  # next period
                logger.warning("could not trim the device event logs: %s", exc)
        if step := clock.stepped():
            try:
                slowest = await store.run(presence.slowest_heartbeat)
            except Exception as exc:  # a database that failed now: the next step's look
                logger.warning("could not read the devices' heartbeat intervals: %s", exc)
                slowest = 0.0
            wait = slowest * intervals
            paused_until = max(paused_until, time.monotonic() + wait)
            logger.warning(
                "the hub's clock stepped %+.0f s: no device is marked offline for %.0f s, "
                "until each has heartbeat on the new time",
                step,
                wait,
            )
        if time.monotonic() < paused_until:
            continue
        try:
            silent = await store.expire_silent(now=clock.now(), intervals=intervals)
        except Exception as exc:  # a locked or read-only database: try next period
            logger.warning("could not sweep for silent devices: %s", exc)
            continue
        for device_id in silent:
            logger.info("%s offline (no heartbeat)", device_id)
