"""Drift level changes as events for the sinks, on both back-ends: the watch publishes
each change of a device's level once (first judged, drifting, gone from the window),
nothing while levels hold, and nothing again after a restart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.models.driftwatch import DriftWatch
from hub.store import Device, HubStore, Upload, outbox
from tests.databases import BACKENDS, database
from tests.integration.test_model_metrics import rollup_body

FLEET = [f"dev-drift{n:07d}" for n in range(5)]
DAY_S = 86400.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    opened.publish_events()
    yield opened
    opened.close()


async def add(store: HubStore, device_id: str) -> None:
    await store.add_device(
        Device(
            device_id, "generic", {}, False, None, None, None, None, {}, {},
            time.time(), device_id.encode().hex(), 1.0, 2.0,
        )
    )  # fmt: skip


async def roll_up(store: HubStore, device_id: str, seq: int, at: float, body: bytes) -> None:
    await store.apply_uploads([Upload(device_id, "metrics", seq, seq, [(seq, at, body)])], now=at)


async def drift_events(store: HubStore, after: int) -> list[tuple[str, dict[str, Any]]]:
    found = await store.run(outbox.after, after, 1000)
    return [(e.subject, e.data) for e in found if e.type == "org.outpost.drift.changed"]


async def last_id(store: HubStore) -> int:
    found = await store.run(outbox.after, 0, 100_000)
    return found[-1].id if found else 0


async def test_each_change_of_level_is_published_once(store: HubStore) -> None:
    start = time.time()
    clock = [start]
    for device_id in FLEET:
        await add(store, device_id)
        await roll_up(store, device_id, 1, start, rollup_body())
    watch = DriftWatch(store, clock=lambda: clock[0])

    before = await last_id(store)
    changes = await watch.look()
    assert {(c.device_id, c.previous, c.level) for c in changes} == {
        (d, "insufficient", "stable") for d in FLEET
    }
    published = await drift_events(store, before)
    assert sorted(subject for subject, _ in published) == FLEET
    assert published[0][1] | {"psi_labels": 0, "psi_confidence": 0} == {
        "model": "m",
        "version": "1",
        "previous": "insufficient",
        "level": "stable",
        "psi_labels": 0,
        "psi_confidence": 0,
        "count": 100,
    }

    before = await last_id(store)
    assert await watch.look() == []  # levels hold: no news
    assert await drift_events(store, before) == []

    # A day later: four devices report as before, the odd one out sees cracks half the
    # time and is less sure, and the last reports nothing (it leaves the window).
    clock[0] = start + DAY_S + 3600
    odd, quiet = FLEET[0], FLEET[-1]
    for device_id in FLEET[1:-1]:
        await roll_up(store, device_id, 2, clock[0], rollup_body())
    odd_body = rollup_body(labels={"ok": 50, "crack": 50}, confidence=[0] * 5 + [50, 0, 0, 0, 50])
    await roll_up(store, odd, 2, clock[0], odd_body)

    before = await last_id(store)
    changes = await watch.look()
    assert {(c.device_id, c.previous, c.level) for c in changes} == {
        (odd, "stable", "drift"),
        (quiet, "stable", "insufficient"),
    }
    by_device = dict(await drift_events(store, before))
    assert by_device[odd]["psi_labels"] >= 0.25
    assert by_device[odd]["count"] == 100
    assert by_device[quiet]["level"] == "insufficient"
    assert by_device[quiet]["psi_labels"] is None

    # A restart (a new watch, as after a failover) finds nothing new to say.
    before = await last_id(store)
    assert await DriftWatch(store, clock=lambda: clock[0]).look() == []
    assert await drift_events(store, before) == []
