"""Judging a large fleet's drift (every /metrics scrape, the drift API, the leader's
watch) leaves the hub's event loop free to serve MQTT intake and the API meanwhile."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.models.driftwatch import fleet_drift
from hub.store import HubStore
from hub.store.modelstats import encode_json, hour_of
from hub.store.sql import Sql

DEVICES = 1500
# A tick of the loop taking this much longer than asked means the loop was held up.
STALL_S = 0.5


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(tmp_path / "hub.db")
    yield opened
    opened.close()


def fill(db: Sql, now: float) -> None:
    rnd = random.Random(1)
    rows = [
        (
            "vibration-anomaly",
            "1.0.0",
            hour_of(now),
            f"dev-{n:05d}",
            500,
            encode_json([rnd.randint(0, 100) for _ in range(10)]),
            encode_json({f"l{j}": rnd.randint(0, 100) for j in range(8)}),
            encode_json({}),
            0.0,
        )
        for n in range(DEVICES)
    ]
    with db.write():
        db.executemany(
            """INSERT INTO model_stats (model, version, hour, device_id, count, confidence,
               labels, latency, latency_sum_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            rows,
        )


async def test_judging_a_large_fleet_does_not_stall_the_loop(store: HubStore) -> None:
    now = time.time()
    await store.run(fill, now)
    worst = 0.0
    judging = True

    async def tick() -> None:
        nonlocal worst
        while judging:
            asked = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - asked - 0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        (version,) = await fleet_drift(store, now=now)
    finally:
        judging = False
        await ticker
    assert len(version.devices) == DEVICES
    assert worst < STALL_S, f"the event loop was held up {worst:.2f} s by judging drift"
