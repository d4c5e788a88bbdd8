"""The liveness sweep across a step of the hub's own clock, on both back-ends: a step
forward (NTP at a boot without a real-time clock, a resumed virtual machine) made every
online device look silent at once; the sweep waits until each has heartbeat again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hub import liveness
from hub.liveness import ClockSteps
from hub.store import Device, HeartbeatSeen, HelloSeen, HubStore
from tests.databases import BACKENDS, database
from tests.integration.test_device_registry_names import enrolled
from tests.support import eventually

INTERVAL_S = 4.0  # the devices' heartbeat interval: the sweep's pause is 3 of them


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def _online(store: HubStore, device_id: str, now: float) -> None:
    await store.add_device(enrolled(device_id, device_id.removeprefix("dev-"), now))
    hello = HelloSeen(device_id, "c1", now, "generic", "0.1.0", INTERVAL_S, {})
    await store.record_presence([hello])


async def test_a_step_forward_of_the_hubs_clock_takes_no_live_device_offline(
    store: HubStore, caplog: pytest.LogCaptureFixture
) -> None:
    step = [0.0]

    def wall() -> float:
        return time.time() + step[0]

    live, dead = "dev-00000000live", "dev-00000000dead"
    await _online(store, live, wall())
    await _online(store, dead, wall())
    caplog.set_level(logging.INFO, logger="hub.liveness")
    clock = ClockSteps(wall)  # the time before the step
    tasks = [asyncio.create_task(liveness.sweep(store, intervals=3, clock=clock))]
    try:
        step[0] = 3600.0  # an hour forward: every stamp now looks an hour old
        await eventually(
            lambda: _said(caplog, "the hub's clock stepped +3600 s"), timeout=30, what="step"
        )
        # `live` heartbeats on the new time, as a live device does; `dead` not.
        tasks.append(asyncio.create_task(_heartbeats(store, live, wall)))

        async def dead_offline() -> bool:
            return not (await _device(store, dead)).online

        await eventually(dead_offline, timeout=60, what="the silent device swept")
        assert (await _device(store, live)).online
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _heartbeats(store: HubStore, device_id: str, wall: Callable[[], float]) -> None:
    """A live device's heartbeats, every interval (the device's pace, not a wait)."""
    while True:
        await store.record_presence([HeartbeatSeen(device_id, "c1", wall(), INTERVAL_S, {})])
        await asyncio.sleep(INTERVAL_S / 2)


async def _said(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def _device(store: HubStore, device_id: str) -> Device:
    found = await store.device(device_id)
    assert found is not None
    return found


def test_steps_are_told_from_a_slewing_clock() -> None:
    wall, steady = [1000.0], [50.0]
    clock = ClockSteps(lambda: wall[0], lambda: steady[0])
    wall[0] += 10.0
    steady[0] += 10.0
    assert clock.stepped() == 0.0  # time passed on both
    wall[0] += 10.003
    steady[0] += 10.0
    assert clock.stepped() == 0.0  # NTP slewing: milliseconds
    wall[0] += 3600.0
    assert clock.stepped() == pytest.approx(3600.0)
    wall[0] -= 120.0
    assert clock.stepped() == pytest.approx(-120.0)
    assert clock.stepped() == 0.0  # told once
