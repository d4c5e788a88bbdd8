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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._paths = paths
        self._config = config
        self._store = store
        self._intake = intake
        self._broker = broker
        self._clock = clock
        self.holds_total = 0  # holds since the hub started (for /metrics)
        self.held: dict[str, float] = {}  # device -> when its hold ends, as the CRL lists
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
            if t.recent >= threshold
            and t.dropped - self._dropped_at_hold.get(t.device_id, 0) >= threshold
            and t.device_id not in self.held
        ]

    async def run(self) -> None:
        """Run until cancelled. The CRL written at the hub's start lists the holds that
        were in force then; this lets them go when they end."""
        self.held = await self._store.holds(self._clock())
        while True:
            await asyncio.sleep(CHECK_S)
            try:
                await self.check()
            except Exception:  # a locked database, a broker restarting: next second
                logger.exception("could not judge or update device holds")

    async def check(self) -> None:
        for device_id in self.over_threshold():
            await self.hold(device_id)
        now = self._clock()
        held = await self._store.holds(now)
        if held.keys() != self.held.keys():  # a hold ended (or another process's began)
            ended = sorted(self.held.keys() - held.keys())
            self.held = held
            await revocation.write_crl(self._paths, self._store, self._config)
            await self._reload()
            for device_id in ended:
                logger.warning("%s is no longer held off: it may connect again", device_id)

    async def hold(self, device_id: str) -> None:
        seen = next((t for t in self._intake.throttled() if t.device_id == device_id), None)
        recent = seen.recent if seen else 0
        if seen is not None:
            self._dropped_at_hold[device_id] = seen.dropped
        now = self._clock()
        until = now + self._config.device_hold_s
        if not await self._store.hold_device(device_id, now=now, until=until):
            return  # unknown to the registry (its CN names no device) or revoked
        self.held[device_id] = until
        self.holds_total += 1
        await revocation.write_crl(self._paths, self._store, self._config)
        reloaded = await self._reload()
        # After the reload: the device cannot reconnect once its session is gone.
        ended = await sessions.take_over(self._paths, self._config, self._store, device_id)
        logger.warning(
            "held %s off for %.0f s: about %d of its messages were dropped over its budget "
            "in the last minute (device_hold_drops %d); its certificates are on hold in the "
            "CRL%s; its session %s",
            device_id,
            self._config.device_hold_s,
            recent,
            self._config.device_hold_drops,
            "" if reloaded else " (the broker did not confirm reading it)",
            "was ended" if ended else "could not be taken over",
        )

    async def _reload(self) -> bool:
        if self._broker is None:  # an external broker: its reload command, if any
            return await revocation.reload_external(self._config)
        return await self._broker.reload()
