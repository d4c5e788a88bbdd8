"""Judging a large fleet's drift (every /metrics scrape, the drift API, the leader's
watch) leaves the hub's event loop free to serve MQTT intake and the API meanwhile."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hub.models import drift
from hub.models.driftwatch import fleet_drift
from hub.store import HubStore, modelstats
from hub.store.modelstats import encode_json, hour_of
from hub.store.sql import Sql

DEVICES = 1500
T = TypeVar("T")


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


async def test_judging_a_large_fleet_runs_off_the_event_loop(
    store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the work runs, not how long the loop waited: a tick's delay measures the
    # machine's load as much as the hub (a loaded run saw 0.62 s with the work off it).
    now = time.time()
    await store.run(fill, now)
    in_a_loop: dict[str, bool] = {}

    def watched(step: str, work: Callable[..., T]) -> Callable[..., T]:
        def run(*args: Any, **kwargs: Any) -> T:
            try:
                asyncio.get_running_loop()
                in_a_loop[step] = True
            except RuntimeError:  # no event loop runs in this thread
                in_a_loop[step] = False
            return work(*args, **kwargs)

        return run

    monkeypatch.setattr(modelstats, "add_hour", watched("read", modelstats.add_hour))
    monkeypatch.setattr(drift, "evaluate", watched("judge", drift.evaluate))
    (version,) = await fleet_drift(store, now=now)

    assert len(version.devices) == DEVICES
    assert in_a_loop == {"read": False, "judge": False}


async def test_a_unit_queued_during_the_days_read_waits_for_an_hour_not_the_day(
    store: HubStore,
) -> None:
    """On SQLite every unit of work takes the one database thread: the fleet's day of
    statistics is read an hour a unit, so ingest queued meanwhile runs between hours
    (read as one unit, 25,000 devices held it for 4 s)."""
    now = time.time()
    for hours_ago in range(3):
        await store.run(fill, now - hours_ago * 3600)
    finished: list[str] = []

    async def read() -> None:
        distributions = await store.model_distributions(since=now - 86400)
        assert len(distributions[("vibration-anomaly", "1.0.0")]) == DEVICES
        finished.append("read")

    reading = asyncio.create_task(read())
    await asyncio.sleep(0)  # the read's first unit is queued
    await store.run(lambda db: db.execute("SELECT 1").fetchall())  # the unit queued after it
    finished.append("other unit")
    await reading
    assert finished == ["other unit", "read"]
