"""The leader's allocation pass with a large fleet, in the hub's process on SQLite: one
submitted task, a burst of 2,000, 20 submissions at once, and a pass over a busy fleet,
against a bare read of the same devices' rows (what a pass cannot do without)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from hub.config import HubConfig
from hub.store import HubStore, NewTask, TaskSettings
from hub.store.sql import Sql
from hub.tasks import allocation
from hub.tasks.dispatcher import Dispatcher
from tests.bench.common import Result

DEVICES = 25_000
BUSY_HELD = 6  # tasks each busy device holds: all it may (4 slots + 2 ahead)
FREE = 10  # devices of the busy fleet with room
TRIES = 7
SETTINGS = TaskSettings(
    accept_timeout_s=30, max_attempts=3, prefetch=2, stale_after_heartbeats=3, max_plan=2000
)
_MODELS = json.dumps([{"name": "m", "version": "1", "sha256": "", "state": "ready", "error": ""}])
_LOAD = json.dumps({"cpu_percent": 5, "memory_percent": 20, "disk_percent": 30, "rss_bytes": 1})
_COLUMNS = """device_id, labels, models, load, last_heartbeat, heartbeat_interval, task_slots,
              task_inbox, task_latency_ms"""


def run() -> list[Result]:
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(_run(Path(folder)))


async def _run(folder: Path) -> list[Result]:
    store = HubStore(folder / "hub.db")
    try:
        await store.run(_fleet)
        bare = await _bare_reads(store)
        one = await _submissions(store, 1)
        burst = await _submissions(store, 2000)
        together = await _together(store, 20)
        ghost = await _unplaceable(store)
        await store.run(_busy)  # (ends every task so far, the unplaceable one too)
        busy = await _submissions(store, 1)
        busy_bare = await _bare_reads(store)
    finally:
        store.close()
    fleet = f"{DEVICES:,} devices online, one model, equal loads (all tie)"
    return [
        Result(
            "allocation: one task submitted, idle fleet",
            1 / one,
            1 / bare,
            "passes/s",
            f"{one * 1000:.0f} ms a submission (queued, allocated, committed); {fleet}; "
            "raw = the bare read of every device's row the pass reads",
        ),
        Result(
            "allocation: 2,000 tasks in one submission",
            2000 / burst,
            None,
            "tasks/s",
            f"{burst * 1000:.0f} ms, all assigned in one transaction",
        ),
        Result(
            "allocation: 20 submissions of one task at once",
            20 / together,
            1 / one,
            "subm./s",
            f"all 20 answered in {together * 1000:.0f} ms (grouped at the leader); "
            "raw = submissions one after another",
        ),
        Result(
            "allocation: a pass with one task for a model no device has, idle fleet",
            1 / ghost,
            1 / bare,
            "passes/s",
            f"{ghost * 1000:.1f} ms a pass (the task stays queued); raw as above",
        ),
        Result(
            "allocation: one task submitted, busy fleet",
            1 / busy,
            1 / busy_bare,
            "passes/s",
            f"{busy * 1000:.0f} ms; all but {FREE} devices hold all they may "
            f"({(DEVICES - FREE) * BUSY_HELD:,} tasks in flight); raw as above",
        ),
    ]


def _fleet(db: Sql) -> None:
    now = time.time()
    with db.write():
        db.executemany(
            """INSERT INTO devices (device_id, name, profile, labels, online, conn, last_seen,
                   last_heartbeat, heartbeat_interval, agent_version, capabilities, runtime,
                   models, task_slots, task_inbox, load, enrolled_at, cert_serial,
                   task_latency_ms)
               VALUES (?, ?, 'gateway', '{}', 1, 'c', ?, ?, 10, '1', '{}', 'rt', ?, 4, 6, ?,
                   ?, ?, 5.0)""",
            [
                (f"dev-{n:05d}", f"dev-{n:05d}", now, now, _MODELS, _LOAD, now, f"{n:x}")
                for n in range(DEVICES)
            ],
        )


def _busy(db: Sql) -> None:
    """Every device but `FREE` given all it may hold (and the tasks so far ended)."""
    now = time.time()
    with db.write():
        db.execute("UPDATE tasks SET state = 'succeeded'")
        db.executemany(
            """INSERT INTO tasks (task_id, state, model, version, input, dtype, priority,
                   deadline, lease_s, target, created_at, updated_at, submitted_by, device_id,
                   attempt, lease_expires)
               VALUES (?, 'running', 'm', '', ?, 'int8', 0, ?, 600, '{}', ?, ?, 'bench', ?, 1,
                   ?)""",
            [
                (f"busy-{n}-{k}", b"\x90", now + 600, now, now, f"dev-{n:05d}", now + 600)
                for n in range(FREE, DEVICES)
                for k in range(BUSY_HELD)
            ],
        )


async def _bare_reads(store: HubStore) -> float:
    def read(db: Sql) -> float:
        start = time.perf_counter()
        db.execute(f"SELECT {_COLUMNS} FROM devices WHERE online = 1").fetchall()  # noqa: S608
        return time.perf_counter() - start

    return statistics.median([await store.run(read) for _ in range(TRIES)])


def _tasks(count: int) -> list[NewTask]:
    deadline = time.time() + 600
    return [
        NewTask(uuid.uuid4().hex, "m", "", b"\x91\x01", "int8", 0, deadline, 60, {}, "bench")
        for _ in range(count)
    ]


async def _submissions(store: HubStore, count: int) -> float:
    """Median seconds of queuing and allocating `count` tasks in one transaction."""
    times = []
    for _ in range(TRIES):
        new = _tasks(count)
        start = time.perf_counter()
        assigned, _ = await store.create_and_allocate(
            new, now=time.time(), settings=SETTINGS, plan=allocation.plan
        )
        times.append(time.perf_counter() - start)
        if len(assigned) != count:
            raise RuntimeError(f"{len(assigned)} of {count} tasks assigned")
    return statistics.median(times)


async def _unplaceable(store: HubStore) -> float:
    """Median seconds of a pass that finds one queued task for a model no device has."""
    (task,) = _tasks(1)
    await store.create_tasks([dataclasses.replace(task, model="ghost")], now=time.time())
    times = []
    for _ in range(TRIES):
        start = time.perf_counter()
        assigned, _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=allocation.plan)
        times.append(time.perf_counter() - start)
        if assigned:
            raise RuntimeError(f"a task for a model no device has went to {assigned}")
    return statistics.median(times)


async def _together(store: HubStore, count: int) -> float:
    """Median seconds until `count` submissions of one task, made at once to a leading
    dispatcher, are all answered."""

    async def publish(topic: str, payload: bytes) -> None:
        pass

    dispatcher = Dispatcher(store, HubConfig(), publish, queue=store)
    leading = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0)  # it leads from its first step
        times = []
        for _ in range(TRIES):
            start = time.perf_counter()
            await asyncio.gather(*(dispatcher.submit(_tasks(1), time.time()) for _ in range(count)))
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
