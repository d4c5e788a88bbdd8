"""The hub's task store on a real SQLite file and a real PostgreSQL database: allocation
passes, device updates and results, without a broker (the end-to-end runs are in
test_task_allocation.py and test_task_faults.py)."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hub.store import (
    HeartbeatSeen,
    HelloSeen,
    HubStore,
    NewTask,
    TaskSettings,
    Upload,
)
from hub.store.candidates import Candidate, read_candidates
from hub.store.sql import Sql
from hub.store.taskmoves import BUSY_BACKOFF_S
from hub.tasks.allocation import plan
from outpost import wire
from tests.databases import BACKENDS, database

SETTINGS = TaskSettings(
    accept_timeout_s=10, max_attempts=3, prefetch=0, stale_after_heartbeats=3, max_plan=100
)
READY = [{"name": "m", "version": "1", "sha256": "", "state": "ready", "error": ""}]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def online(store: HubStore, device_id: str, slots: int = 1) -> None:
    now = time.time()
    await store.record_presence(
        [
            HelloSeen(device_id, "c", now, "generic", "1", 1.0, {}, "rt", READY, slots),
            HeartbeatSeen(device_id, "c", now, 1.0, {"cpu_percent": 5.0}),
        ]
    )


def new(task_id: str, *, priority: int = 5, target: dict[str, Any] | None = None) -> NewTask:
    return NewTask(
        task_id=task_id,
        model="m",
        version="",
        input=msgpack.packb([[1]]),
        dtype="int8",
        priority=priority,
        deadline=time.time() + 600,
        lease_s=60,
        target=target or {},
        submitted_by="t",
    )


async def test_unplaceable_tasks_do_not_hide_runnable_ones_behind_them(store: HubStore) -> None:
    await online(store, "dev-a")
    gone = {"device": "dev-gone"}  # never online
    await store.create_tasks(
        [new(f"tsk-{n:016x}", priority=9, target=gone) for n in range(250)], now=time.time()
    )
    await store.create_tasks([new("tsk-ffffffffffffffff", priority=0)], now=time.time())

    assigned, _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=plan)

    assert [(a.task_id, a.device_id, a.attempt) for a in assigned] == [
        ("tsk-ffffffffffffffff", "dev-a", 1)
    ]


async def test_a_task_naming_a_device_that_reports_none_of_its_models_is_given_it(
    store: HubStore,
) -> None:
    """The operator chose the device; it says whether it can run the task. A short
    queue's pass read only devices that report a queued model, so the task waited until
    the queue grew long."""
    now = time.time()
    await store.record_presence(
        [
            HelloSeen("dev-n", "c", now, "generic", "1", 1.0, {}, "rt", [], 1),
            HeartbeatSeen("dev-n", "c", now, 1.0, {"cpu_percent": 5.0}),
        ]
    )
    await online(store, "dev-a")  # reports the model: read either way
    await store.create_tasks([new("tsk-named", target={"device": "dev-n"})], now=now)

    assigned, _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=plan)

    assert [(a.task_id, a.device_id) for a in assigned] == [("tsk-named", "dev-n")]


async def test_a_full_device_is_asked_again_and_a_refusing_one_is_not(store: HubStore) -> None:
    await online(store, "dev-a")
    await store.create_tasks(
        [new("tsk-0000000000000001"), new("tsk-0000000000000002")], now=time.time()
    )
    first, _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=plan)
    (a,) = first

    full = wire.TaskUpdate(task_id=a.task_id, attempt=1, state="rejected", reason="full: 64 held")
    await store.task_updates("dev-a", [full], now=time.time(), settings=SETTINGS)
    task = await store.task(a.task_id)
    assert task is not None
    assert (task.state, task.excluded) == ("queued", [])

    # Asked again once it has had a moment (`BUSY_BACKOFF_S`): a full device is busy now.
    later = time.time() + BUSY_BACKOFF_S + 0.1
    again, _ = await store.allocate(now=later, settings=SETTINGS, plan=plan)
    b = again[0]
    refused = wire.TaskUpdate(
        task_id=b.task_id, attempt=b.attempt, state="rejected", reason="unknown_model: m"
    )
    await store.task_updates("dev-a", [refused], now=time.time(), settings=SETTINGS)
    task = await store.task(b.task_id)
    assert task is not None
    assert (task.state, task.excluded) == ("queued", ["dev-a"])


async def test_reports_of_several_devices_apply_together_and_stale_ones_are_named(
    store: HubStore,
) -> None:
    await online(store, "dev-a")
    await online(store, "dev-b")
    await store.create_tasks(
        [new("tsk-0000000000000001"), new("tsk-0000000000000002")], now=time.time()
    )
    assigned, _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=plan)
    held = {a.device_id: a for a in assigned}
    assert sorted(held) == ["dev-a", "dev-b"]
    a, b = held["dev-a"], held["dev-b"]

    outcomes = await store.task_updates_many(
        [
            ("dev-a", [wire.TaskUpdate(task_id=a.task_id, attempt=1, state="running")]),
            (
                "dev-b",
                [
                    wire.TaskUpdate(task_id=b.task_id, attempt=1, state="accepted"),
                    # Not dev-b's: another device's task, so stale and left as it is.
                    wire.TaskUpdate(task_id=a.task_id, attempt=1, state="rejected", reason="x"),
                ],
            ),
        ],
        now=time.time(),
        settings=SETTINGS,
    )

    assert outcomes == [
        [(a.task_id, "applied")],
        [(b.task_id, "applied"), (a.task_id, "stale")],
    ]
    task_a, task_b = await store.task(a.task_id), await store.task(b.task_id)
    assert task_a is not None
    assert task_b is not None
    assert (task_a.state, task_a.device_id) == ("running", "dev-a")
    assert (task_b.state, task_b.device_id) == ("accepted", "dev-b")


async def test_a_malformed_result_is_recorded_and_ends_nothing(store: HubStore) -> None:
    await online(store, "dev-a")
    await store.create_tasks([new("tsk-0000000000000001")], now=time.time())
    (a,), _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=plan)
    bad = {"kind": "task", "task_id": a.task_id, "attempt": 1, "status": "succeeded"}
    bodies = [
        msgpack.packb({**bad, "label": b"\x00bytes"}),
        msgpack.packb({**bad, "scores": {"x": "high"}}),
        msgpack.packb({**bad, "label": "normal", "confidence": 0.9}),
    ]
    upload = Upload("dev-a", "results", 1, 3, [(n + 1, 0.0, b) for n, b in enumerate(bodies)])

    outcome = await store.apply_uploads([upload], now=time.time())

    assert outcome.task_results == {"malformed": 2, "accepted": 1}
    task = await store.task(a.task_id)
    assert task is not None
    assert task.state == "succeeded"
    assert task.result is not None
    assert task.result["label"] == "normal"
    assert [e.state for e in task.events].count("malformed") == 2


async def test_a_device_claiming_1024_slots_earns_them_and_gets_at_most_the_cap(
    store: HubStore,
) -> None:
    """Issue 15 item 11: a hello may claim 1,024 slots and 0 % CPU, winning most tasks."""
    await online(store, "dev-greedy", slots=1024)
    await online(store, "dev-honest", slots=2)
    await store.create_tasks([new(f"tsk-{n:016x}") for n in range(100)], now=time.time())
    settings = dataclasses.replace(SETTINGS, max_slots=4)

    first, _ = await store.allocate(now=time.time(), settings=settings, plan=plan)
    held = collections.Counter(a.device_id for a in first)
    assert held == {"dev-greedy": 1, "dev-honest": 1}, "a claim taken before any result"

    # One result back from each: now their claims count, the greedy one's up to the cap.
    results = []
    for a in first:
        body = {"kind": "task", "task_id": a.task_id, "attempt": a.attempt}
        body |= {"status": "succeeded", "label": "ok", "confidence": 0.9, "latency_ms": 3.0}
        results.append(Upload(a.device_id, "results", 1, 1, [(1, 0.0, msgpack.packb(body))]))
    await store.apply_uploads(results, now=time.time())
    then, _ = await store.allocate(now=time.time(), settings=settings, plan=plan)
    held = collections.Counter(a.device_id for a in then)
    assert held == {"dev-greedy": 4, "dev-honest": 2}


async def test_a_pass_reads_only_devices_with_room_and_an_explanation_sees_them_all(
    store: HubStore,
) -> None:
    now = time.time()
    await online(store, "dev-full")
    await online(store, "dev-free", slots=3)
    # Claims 4 slots, but its inbox holds 2: the hub never gives it more than that.
    await store.record_presence(
        [HelloSeen("dev-inbox", "c", now, "generic", "1", 1.0, {}, "rt", READY, 4, 2)]
    )
    await store.create_tasks([new("tsk-full", target={"device": "dev-full"})], now=now)
    first, _ = await store.allocate(now=now, settings=SETTINGS, plan=plan)
    assert [(a.task_id, a.device_id) for a in first] == [("tsk-full", "dev-full")]

    async def read(prefetch: int, with_room_only: bool) -> list[tuple[str, int, int, int]]:
        settings = dataclasses.replace(SETTINGS, prefetch=prefetch)

        def unit(db: Sql) -> list[Candidate]:
            with db.snapshot():
                return read_candidates(db, now, settings, with_room_only=with_room_only)

        found = await store.run(unit)
        return sorted((c.device_id, c.held, c.concurrency, c.slots) for c in found)

    # No result back from any yet: one task at a time each, plus what is given ahead.
    assert await read(2, False) == [
        ("dev-free", 0, 1, 3),
        ("dev-full", 1, 1, 3),
        ("dev-inbox", 0, 1, 2),  # 1 + 2 ahead, but its inbox holds 2
    ]
    assert [d for d, *_ in await read(2, True)] == ["dev-free", "dev-full", "dev-inbox"]
    # Nothing given ahead: dev-full holds all it may, and the pass does not read it...
    assert [d for d, *_ in await read(0, True)] == ["dev-free", "dev-inbox"]
    # ...while a waiting task's explanation still sees it (as full).
    candidates, _ = await store.task_fleet(now=now, settings=SETTINGS)
    assert sorted(c.device_id for c in candidates) == ["dev-free", "dev-full", "dev-inbox"]


async def test_a_short_queue_reads_only_devices_naming_its_models(store: HubStore) -> None:
    now = time.time()
    await online(store, "dev-m")  # reports model "m"
    odd = [{"name": "a_b%c\\é", "version": "1", "sha256": "", "state": "ready", "error": ""}]
    look_alike = [{"name": "axb%c\\é", "version": "1", "sha256": "", "state": "ready", "error": ""}]
    await store.record_presence(
        [
            HelloSeen("dev-odd", "c", now, "generic", "1", 1.0, {}, "rt", odd, 1),
            HelloSeen("dev-look-alike", "c", now, "generic", "1", 1.0, {}, "rt", look_alike, 1),
        ]
    )

    async def read(needed: set[str] | None) -> list[str]:
        def unit(db: Sql) -> list[Candidate]:
            with db.snapshot():
                return read_candidates(db, now, SETTINGS, with_room_only=True, needed=needed)

        return sorted(c.device_id for c in await store.run(unit))

    assert await read(None) == ["dev-look-alike", "dev-m", "dev-odd"]
    assert await read({"ghost"}) == []  # no device has it: none is read
    assert await read({"m"}) == ["dev-m"]
    # LIKE's own characters and a non-ASCII one in a name match only themselves (SQLite's
    # LIKE ignores ASCII case: a look-alike would only be read, never wrongly left out).
    assert await read({"a_b%c\\é"}) == ["dev-odd"]
    assert await read({"ghost", "m", "a_b%c\\é"}) == ["dev-m", "dev-odd"]

    # A pass with a task for a model nobody has still places the runnable one beside it.
    ghost = dataclasses.replace(new("tsk-ghost", priority=9), model="ghost")
    await store.create_tasks([ghost, new("tsk-m", priority=0)], now=now)
    assigned, _ = await store.allocate(now=now, settings=SETTINGS, plan=plan)
    assert [(a.task_id, a.device_id) for a in assigned] == [("tsk-m", "dev-m")]


async def test_a_device_that_answered_full_is_offered_nothing_for_a_moment(
    store: HubStore,
) -> None:
    """It was asked again at once: a task named to a busy device bounced as fast as the
    round trip went (76 attempts in 4 s, each a commit and two messages) until its
    deadline. Now it waits out `BUSY_BACKOFF_S`; a full device costs no attempt."""
    await online(store, "dev-busy")
    await online(store, "dev-idle")
    now = time.time()
    await store.create_tasks([new("tsk-0000000000000001", target={"device": "dev-busy"})], now=now)
    (first,) = (await store.allocate(now=now, settings=SETTINGS, plan=plan))[0]
    assert first.device_id == "dev-busy"

    refusal = wire.TaskUpdate(
        task_id=first.task_id, attempt=first.attempt, state="rejected", reason="full: CPU at 99 %"
    )
    await store.task_updates("dev-busy", [refusal], now=now, settings=SETTINGS)

    def candidates(at: float) -> Any:
        return lambda db: [c.device_id for c in read_candidates(db, at, SETTINGS)]

    assert await store.run(candidates(now + 0.1)) == ["dev-idle"]  # busy: left out
    assert (await store.allocate(now=now + 0.1, settings=SETTINGS, plan=plan))[0] == []
    later = now + BUSY_BACKOFF_S + 0.1
    assert sorted(await store.run(candidates(later))) == ["dev-busy", "dev-idle"]
    (again,) = (await store.allocate(now=later, settings=SETTINGS, plan=plan))[0]
    assert (again.device_id, again.task_id) == ("dev-busy", first.task_id)


async def test_full_bounces_use_up_no_attempt(store: HubStore) -> None:
    """Each assignment adds one to the attempt number (the fencing token), and the cap
    compared that: after three "full" bounces, the first real lapse failed the task."""
    await online(store, "dev-a")
    now = time.time()
    await store.create_tasks([new("tsk-0000000000000001")], now=now)
    for _ in range(SETTINGS.max_attempts):  # momentarily busy, three times
        (a,), _ = await store.allocate(now=now, settings=SETTINGS, plan=plan)
        full = wire.TaskUpdate(
            task_id=a.task_id, attempt=a.attempt, state="rejected", reason="full: cpu 97 %"
        )
        await store.task_updates("dev-a", [full], now=now, settings=SETTINGS)
        now += BUSY_BACKOFF_S + 0.1
    (a,), _ = await store.allocate(now=now, settings=SETTINGS, plan=plan)
    # Its one real attempt is not accepted in time (the message was lost, say).
    await store.allocate(now=now + SETTINGS.accept_timeout_s + 1, settings=SETTINGS, plan=plan)

    task = await store.task("tsk-0000000000000001")
    assert task is not None
    assert task.state in ("queued", "assigned"), (task.error, [e.state for e in task.events])
    assert task.attempt >= SETTINGS.max_attempts + 1  # the token still only grows
