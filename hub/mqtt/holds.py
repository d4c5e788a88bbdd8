"""Holding off a device that floods the hub.

The intake (hub/mqtt/intake.py) drops what a device sends past its budget before anything
decodes it, so a flood cannot grow the hub or starve other devices. But the flood still
costs the broker and the hub's link the work of carrying it, and a QoS 1 flood still
fills the broker's queue for the hub. A device that keeps going past its budget (more
than `device_hold_drops` messages dropped within a minute: an honest device drops none)
is therefore held off for `device_hold_s`:

1. the registry marks it held until then (and offline);
2. the CRL lists its certificates as on hold (a suspension, reason certificateHold) and
   the broker re-reads it, so its next connection is refused;
3. its session is taken over (hub/mqtt/sessions.py), which ends the connection it has.

When the hold ends the hub writes the CRL without it and the broker re-reads it; the
device may connect again (an agent refused as revoked retries every `refused_retry_s`).
A device revoked meanwhile stays listed as revoked. Holds are in the database, so a hub
that restarts keeps them, and a `device revoke` beside it writes a CRL that keeps them.

Drops while the hub catches up do not count (hub/mqtt/intake.py): the broker then
hands over at wire speed what honest devices sent while the hub was away or its event
loop was held, and the intake drops it as if they had sent it that fast. The beat that
lets the intake see such a stall comes from here, on the loop it watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hub.broker.managed import BrokerSupervisor
from hub.config import HubConfig
from hub.fleet import revocation
from hub.mqtt import sessions
from hub.mqtt.intake import DeviceIntake
from hub.paths import HubPaths
from hub.store import HubStore

logger = logging.getLogger(__name__)

CHECK_S = 1.0
# The intake's beat: well within its STALL_S, and apart from the checks, whose store and
# broker calls may take seconds without the event loop being held.
BEAT_S = 0.5


class FloodHolds:
    """Judges the intake's drops once a second; holds off and lets go."""

    def __init__(
        self,
        paths: HubPaths,
        config: HubConfig,
        store: HubStore,
        intake: DeviceIntake,
        *,
        broker: BrokerSupervisor | None,
        listed: set[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._paths = paths
        self._config = config
        self._store = store
        self._intake = intake
        self._broker = broker
        self._clock = clock
        self.holds_total = 0  # holds since the hub started (for /metrics)
        self.held: dict[str, float] = {}  # device -> when its hold ends, in the registry
        # The devices the CRL last written lists as held (at the hub's start: as
        # revocation.prepare wrote it); None: unknown, the first check writes it.
        self._listed: set[str] | None = listed
        self._dropped_at_hold: dict[str, int] = {}  # the intake's total at each hold

    def over_threshold(self) -> list[str]:
        """Devices past `device_hold_drops` drops in the last minute, not held yet."""
        threshold = self._config.device_hold_drops
        if threshold <= 0:
            return []
        # A device let go is judged by what it dropped since its hold, not before.
        return [
            t.device_id
            for t in self._intake.throttled()
            if t.counted >= threshold
            and t.dropped - self._dropped_at_hold.get(t.device_id, 0) >= threshold
            and t.device_id not in self.held
        ]

    async def run(self) -> None:
        """Run until cancelled: beat for the intake, and judge; each check writes the CRL
        when the holds differ from what it lists (one may have ended since the hub's
        start wrote it)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._beat(), name="hub.mqtt.holds.beat")
            await self._judge()

    async def _beat(self) -> None:
        while True:
            self._intake.beat()
            await asyncio.sleep(BEAT_S)

    async def _judge(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            try:
                await self.check()
            except Exception:  # a locked database, a CRL it could not write: next second
                logger.exception("could not judge or update device holds")

    async def check(self) -> None:
        for device_id in self.over_threshold():
            await self.hold(device_id)
        held = await self._store.holds(self._clock())
        self.held = held
        if self._listed is not None and held.keys() == self._listed:
            return
        # A hold ended, began (here or on another replica), or the last write failed.
        listed = self._listed if self._listed is not None else set()
        began, ended = sorted(held.keys() - listed), sorted(listed - held.keys())
        await revocation.write_crl(self._paths, self._store, self._config)
        reloaded = await self._reload()
        self._listed = set(held)  # only once written: a failed write is tried again
        for device_id in began:  # after the reload: it cannot reconnect once it is gone
            ended_session = await sessions.take_over(
                self._paths, self._config, self._store, device_id
            )
            logger.warning(
                "%s is held off until %s: its certificates are on hold in the CRL%s; its "
                "session %s",
                device_id,
                time.strftime("%H:%M:%S", time.localtime(held[device_id])),
                "" if reloaded else " (the broker did not confirm reading it)",
                "was ended" if ended_session else "could not be taken over",
            )
        for device_id in ended:
            logger.warning("%s is no longer held off: it may connect again", device_id)

    async def hold(self, device_id: str) -> None:
        """Hold a device off in the registry; the check that follows lists it in the CRL
        and ends its session."""
        seen = next((t for t in self._intake.throttled() if t.device_id == device_id), None)
        counted = seen.counted if seen else 0
        if seen is not None:
            self._dropped_at_hold[device_id] = seen.dropped
        now = self._clock()
        until = now + self._config.device_hold_s
        if not await self._store.hold_device(device_id, now=now, until=until):
            return  # unknown to the registry (its CN names no device) or revoked
        self.held[device_id] = until
        self.holds_total += 1
        logger.warning(
            "holding %s off for %.0f s: about %d of its messages were dropped over its "
            "budget in the last minute (device_hold_drops %d)",
            device_id,
            self._config.device_hold_s,
            counted,
            self._config.device_hold_drops,
        )

    async def _reload(self) -> bool:
        if self._broker is None:  # an external broker: its reload command, if any
            return await revocation.reload_external(self._config)
        return await self._broker.reload()
