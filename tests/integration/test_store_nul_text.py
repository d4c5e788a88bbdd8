"""Device text holding a NUL, on both back-ends: SQLite stores it; PostgreSQL's text
cannot hold one (it is stored as U+FFFD), and its jsonb refuses the escape \\u0000 (left
out where a JSON column is read). Before, a hello naming its agent "1.0\\0" failed the
whole presence batch, and a result labelled so failed the dashboard's snapshot."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hub.store import HeartbeatSeen, HelloSeen, HubStore, NewTask, TaskSettings, Upload
from hub.tasks.allocation import plan
from tests.databases import BACKENDS, database

SETTINGS = TaskSettings(
    accept_timeout_s=10, max_attempts=3, prefetch=0, stale_after_heartbeats=3, max_plan=100
)
READY = [{"name": "m", "version": "1", "sha256": "", "state": "ready", "error": ""}]
TASK = "tsk-0000000000000001"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def test_a_hello_whose_agent_version_holds_a_nul_is_stored(store: HubStore) -> None:
    # wire.Hello bounds agent_version's length only.
    (flipped,) = await store.record_presence(
        [HelloSeen("dev-1", "c", time.time(), "generic", "1.0\x00", 1.0, {})]
    )
    assert flipped
    device = await store.device("dev-1")
    assert device is not None
    assert device.agent_version in ("1.0\x00", "1.0\ufffd")  # SQLite's, PostgreSQL's


async def test_the_overview_reads_a_result_whose_label_holds_a_nul(store: HubStore) -> None:
    now = time.time()
    await store.record_presence(
        [
            HelloSeen("dev-a", "c", now, "generic", "1", 1.0, {}, "rt", READY, 1),
            HeartbeatSeen("dev-a", "c", now, 1.0, {"cpu_percent": 5.0}),
        ]
    )
    first = await store.overview(after=None, max_devices=10, max_rollouts=5, max_events=50)
    task = NewTask(TASK, "m", "", msgpack.packb([[1]]), "int8", 5, now + 600, 60, {}, "t")
    await store.create_tasks([task], now=now)
    ((a,),) = [(await store.allocate(now=now, settings=SETTINGS, plan=plan))[0]]
    body: dict[str, Any] = {
        "kind": "task", "task_id": a.task_id, "attempt": a.attempt, "status": "succeeded",
        "label": "cat\x00", "latency_ms": 3.0,
    }  # fmt: skip
    outcome = await store.apply_uploads(
        [Upload("dev-a", "results", 1, 1, [(1, now, msgpack.packb(body))])], now=now
    )
    assert outcome.task_results == {"accepted": 1}
    # The dashboard's next tick: tasks ended since the last one.
    found = await store.overview(after=first.cursor, max_devices=10, max_rollouts=5, max_events=50)
    assert [f.model for f in found.finished] == ["m"]
