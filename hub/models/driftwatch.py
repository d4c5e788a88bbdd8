"""Drift, watched: every `PERIOD_S` the leader judges each device's drift (drift.py) and
records the levels (hub/store/driftlevels.py), which publishes each change of level as
an event for the sinks. The API and /metrics judge drift on demand; this is only what
turns a judgement into news, so a hub without sinks does not run it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hub.models import drift
from hub.store import HubStore, driftlevels
from hub.store.driftlevels import Judged, LevelChange

logger = logging.getLogger(__name__)

# Roll-ups arrive every minute or so and drift is judged over a day: looking more often
# would find nothing new.
PERIOD_S = 60.0


async def fleet_drift(store: HubStore, *, now: float | None = None) -> list[drift.VersionDrift]:
    """Every model version's drift over the last `drift.WINDOW_S` (also the API's and
    /metrics' answer)."""
    since = (time.time() if now is None else now) - drift.WINDOW_S
    distributions = await store.model_distributions(since=since)
    # A third of a second of CPU at 25,000 devices on one version: judged in a thread,
    # so that a /metrics scrape does not hold up MQTT intake and the API meanwhile.
    return await asyncio.to_thread(drift.evaluate, distributions)


class DriftWatch:
    def __init__(
        self,
        store: HubStore,
        *,
        period_s: float = PERIOD_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._period_s = period_s
        self._clock = clock

    async def run(self) -> None:
        """Look every period until cancelled; a failed look is logged and retried."""
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("drift: could not judge the fleet's drift; trying again")
            await asyncio.sleep(self._period_s)

    async def look(self) -> list[LevelChange]:
        """Judge every device now; record (and publish) what changed."""
        now = self._clock()
        versions = await fleet_drift(self._store, now=now)
        judged = [
            Judged(
                v.model, v.version, d.device_id, d.level, d.psi_labels, d.psi_confidence, d.count
            )
            for v in versions
            for d in v.devices
        ]
        changes = await self._store.run(driftlevels.record, judged, now)
        for change in changes:
            logger.info(
                "drift: %s on %s@%s went from %s to %s",
                change.device_id,
                change.model,
                change.version,
                change.previous,
                change.level,
            )
        return changes
