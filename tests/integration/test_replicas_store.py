"""Replicas sharing one PostgreSQL database: what SQLite's single writer made safe must
stay safe with several hubs writing at once. Each test drives two or more `HubStore`s on
a throwaway PostgreSQL (tests/postgres.py), with no broker: the end-to-end runs are in
test_replicas.py."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator

import msgpack
import pytest

from hub.store import (
    HeartbeatSeen,
    HelloSeen,
    HubStore,
    Layer,
    NewTask,
    TaskSettings,
    Upload,
)
from hub.store import leadership as lease
from hub.store.leadership import NotLeaderError
from hub.tasks.allocation import plan
from tests.support import enrolled_device

SETTINGS = TaskSettings(
    accept_timeout_s=60, max_attempts=3, prefetch=4, stale_after_heartbeats=3, max_plan=200
)
READY = [{"name": "m", "version": "1", "sha256": "", "state": "ready", "error": ""}]


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[HubStore]]:
    opened = [HubStore(pg_url, pool_size=3) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def new(task_id: str) -> NewTask:
    return NewTask(
        task_id=task_id,
        model="m",
        version="",
        input=msgpack.packb([[1]]),
        dtype="int8",
        priority=5,
        deadline=time.time() + 600,
        lease_s=60,
        target={},
        submitted_by="t",
    )


async def online(store: HubStore, device_id: str, slots: int) -> None:
    now = time.time()
    await store.record_presence(
        [
            HelloSeen(device_id, "c", now, "generic", "1", 1.0, {}, "rt", READY, slots, 64),
            HeartbeatSeen(device_id, "c", now, 1.0, {"cpu_percent": 5.0}),
        ]
    )


async def test_two_replicas_allocating_at_once_never_hold_a_task_twice(
    replicas: list[HubStore],
) -> None:
    a, b = replicas
    for n in range(20):
        await online(a, f"dev-{n:02d}", slots=8)  # 20 x (8 + 4 prefetch) = 240 slots
    ids = [f"tsk-{n:016x}" for n in range(1000)]

    # Submitted through both at once, then both allocate as fast as they can: the
    # leader's singleton is off here, so only the database keeps them apart.
    await asyncio.gather(
        *(
            store.create_tasks([new(t) for t in ids[i : i + 50]], now=time.time())
            for i in range(0, len(ids), 50)
            for store in [(a, b)[i // 50 % 2]]
        )
    )

    async def passes(store: HubStore) -> list[tuple[str, str, int]]:
        got = []
        for _ in range(15):
            assigned, _ = await store.allocate(now=time.time(), settings=SETTINGS, plan=plan)
            got += [(x.task_id, x.device_id, x.attempt) for x in assigned]
        return got

    by_a, by_b = await asyncio.gather(passes(a), passes(b))

    assigned = by_a + by_b
    held = collections.Counter(task_id for task_id, _, _ in assigned)
    assert held, "nothing was assigned"
    # The passes did collide: the database made one of each colliding pair start again.
    assert a.conflicts + b.conflicts > 0
    assert max(held.values()) == 1, f"tasks assigned twice: {held.most_common(3)}"
    # Every device filled to the same level (what one replica alone gives it), none over.
    per_device = collections.Counter(device for _, device, _ in assigned)
    assert len(per_device) == 20
    assert len(set(per_device.values())) == 1, per_device.most_common()
    for task_id, device, attempt in assigned[:50]:
        task = await a.task(task_id)
        assert task is not None
        assert (task.state, task.device_id, task.attempt) == ("assigned", device, attempt)
    counts = await b.task_counts()
    assert counts == {"assigned": len(assigned), "queued": 1000 - len(assigned)}


async def test_consecutive_batches_on_two_replicas_move_one_mark_without_a_gap(
    replicas: list[HubStore],
) -> None:
    """A device's batches land on whichever replica the broker picks: in any order,
    at once or repeated, every record is stored once and the mark only grows."""
    a, b = replicas

    def batch(first: int) -> Upload:
        records = [(s, float(s), msgpack.packb({"n": s})) for s in range(first, first + 10)]
        return Upload("dev-x", "results", first, first + 9, records)

    uploads = [batch(1 + 10 * i) for i in range(40)]
    marks: list[int] = []

    async def send(store: HubStore, upload: Upload) -> None:
        # The device sends again until a replica takes it without a gap (its ack).
        while True:
            (applied,) = (await store.apply_uploads([upload], now=time.time())).applied
            marks.append(applied.hwm)
            if not applied.gap:
                return
            await asyncio.sleep(0)  # the device's resend, at once: yield to the other sends

    await asyncio.gather(
        *(send((a, b)[i % 2], u) for i, u in enumerate(uploads)),
        *(send((b, a)[i % 2], u) for i, u in enumerate(uploads[::3])),  # redeliveries
    )

    page = await a.records("dev-x", "results", after=0, limit=1000)
    assert [r.seq for r in page] == list(range(1, 401))
    assert [r.body["n"] for r in page] == list(range(1, 401))
    assert (await b.stream_marks(["dev-x"]))[("dev-x", "results")] == 400


async def test_policy_versions_from_two_replicas_are_never_reused(
    replicas: list[HubStore],
) -> None:
    a, b = replicas
    for n in range(10):
        await online(a, f"dev-{n:02d}", slots=1)

    # Both replicas list what is not yet published, so a version may be listed twice;
    # it must never name two devices or two documents.
    issued: dict[int, set[tuple[str, str]]] = collections.defaultdict(set)
    for round_ in range(5):
        await a.put_policy_layer(
            Layer(
                name="fleet",
                scope="fleet",
                selector={},
                device_id=None,
                rank=0,
                document={"heartbeat_interval_s": 10 + round_},
                updated_at=time.time(),
                updated_by="t",
            )
        )
        found = await asyncio.gather(
            a.refresh_policies(None, now=time.time()), b.refresh_policies(None, now=time.time())
        )
        for listed in found:
            for p in listed:
                issued[p.version].add((p.device_id, json.dumps(p.document, sort_keys=True)))
    reused = {v: named for v, named in issued.items() if len(named) > 1}
    assert reused == {}, "a policy version was issued twice"
    assert len(issued) == 50  # a new version per device per change


async def test_a_leader_that_lost_its_lease_is_fenced_out(replicas: list[HubStore]) -> None:
    a, b = replicas
    # A lease long enough that no stall of a slow machine ends it before it is meant to.
    first = await a.run(lease.claim, "replica-a", 30)
    assert first is not None
    assert await b.run(lease.claim, "replica-b", 30) is None  # a leads
    fenced_a = a.fenced(lambda db: lease.check_fence(db, "replica-a", first.epoch))
    assert await fenced_a.task_counts() == {}  # the leader's work goes through

    # a's renewals stop coming (paused): its lease, renewed one last time, lapses.
    renewed = await a.run(lease.claim, "replica-a", 0.1)
    assert renewed is not None
    assert renewed.epoch == first.epoch

    deadline = time.monotonic() + 30
    while (second := await b.run(lease.claim, "replica-b", 30)) is None:
        assert time.monotonic() < deadline, "the lapsed lease was never taken over"
        await asyncio.sleep(0.1)  # a poll with a deadline

    assert second.epoch == first.epoch + 1
    with pytest.raises(NotLeaderError):
        await fenced_a.allocate(now=time.time(), settings=SETTINGS, plan=plan)
    # Coming back, a finds b's lease and does not take it.
    assert await a.run(lease.claim, "replica-a", 0.5) is None


async def test_enrollments_asking_for_one_name_at_once_each_get_a_name_of_their_own(
    replicas: list[HubStore],
) -> None:
    # Both replicas read "cam" as free and insert it: the inserts meet on the unique
    # index. SERIALIZABLE reports that as a conflict (the losing unit read the name
    # first), and the unit that lost runs again and takes the next free name.
    names = await asyncio.gather(
        *(
            replicas[n % 2].add_device(enrolled_device(f"dev-same{n:02d}", name="cam"))
            for n in range(16)
        )
    )
    assert sorted(names) == sorted(["cam", *(f"cam-{n}" for n in range(2, 17))])
    # The control: a name nobody else asks for is the device's own.
    assert await replicas[0].add_device(enrolled_device("dev-alone", name="gate")) == "gate"
