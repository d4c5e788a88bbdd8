"""A replica frozen inside a unit of work (a stalled VM, SIGSTOP between an UPDATE and
its COMMIT) held its rows' locks, and PostgreSQL kept its transaction open for ever: a
frozen leader's lease could not be taken over, and units for its rows waited on it.
Real PostgreSQL, two stores as two replicas."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.leadership import Leadership
from hub.store import HeartbeatSeen, HelloSeen, HubStore
from hub.store import leadership as lease
from tests.support import eventually

FROZEN_FOR_S = 60.0  # longer than any wait below: only its session's end frees the lock


def waiting_on_locks(db: Any) -> int:
    """Sessions of this test's database waiting on a lock."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0])


def lease_expiry(db: Any) -> float:
    """When the lease lapses, by the database's clock: each renewal moves it on."""
    row = db.execute("SELECT expires_at FROM leadership WHERE name = ?", (lease.LEASE,)).fetchone()
    return float(row[0])


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[HubStore]]:
    opened = [HubStore(pg_url, pool_size=3) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


async def test_a_leader_frozen_inside_its_renewal_is_taken_over(
    replicas: list[HubStore],
) -> None:
    a, b = replicas
    resume, frozen = threading.Event(), threading.Event()
    assert await b.run(lease.claim, "replica-b@1", 3.0) is not None  # b leads

    def renew_then_freeze(db: Any) -> Any:
        renewed = lease.claim(db, "replica-b@1", 3.0)  # its UPDATE holds the row's lock
        frozen.set()
        resume.wait(FROZEN_FOR_S)  # stopped before its COMMIT
        return renewed

    b_unit = asyncio.create_task(b.run(renew_then_freeze))
    assert await asyncio.to_thread(frozen.wait, 30)
    leader = Leadership(a, "replica-a", elect=True)
    running = asyncio.create_task(leader.run())
    try:
        deadline = time.monotonic() + 30  # its lease lapses 3 s on; the lock goes 2 s idle
        while not leader.leading:
            assert time.monotonic() < deadline, "no replica leads while b is frozen"
            await asyncio.sleep(0.05)  # a poll with a deadline
    finally:
        resume.set()
        running.cancel()
        outcomes = await asyncio.gather(running, b_unit, return_exceptions=True)
    assert isinstance(outcomes[1], Exception)  # b's session was ended under it


async def test_units_waiting_on_a_frozen_replicas_locks_do_not_cost_the_leader_its_lease(
    replicas: list[HubStore],
) -> None:
    """A frozen replica held a device's row; the leader's units for that device waited on
    its lock and took every thread of its pool, and the lease's renewal queued behind
    them: the leader stopped leading within seconds. The lease has its own connection."""
    a, b = replicas
    now = time.time()
    await a.record_presence([HelloSeen("dev-1", "c", now, "generic", "1", 1.0, {}, "rt", [], 0, 0)])
    leader = Leadership(a, "replica-a", elect=True)
    running = asyncio.create_task(leader.run())
    resume, frozen = threading.Event(), threading.Event()

    def touch_then_freeze(db: Any) -> None:
        db.execute("UPDATE devices SET last_seen = ? WHERE device_id = 'dev-1'", (now,))
        frozen.set()
        resume.wait(FROZEN_FOR_S)

    waiting: list[asyncio.Task[Any]] = []
    try:
        deadline = time.monotonic() + 30
        while not leader.leading:
            assert time.monotonic() < deadline, "a never led"
            await asyncio.sleep(0.05)  # a poll with a deadline
        waiting.append(asyncio.create_task(b.run(touch_then_freeze)))
        assert await asyncio.to_thread(frozen.wait, 30)
        # dev-1's heartbeats reach a (a shared subscription): each waits on the lock.
        units = [
            asyncio.create_task(
                a.record_presence([HeartbeatSeen("dev-1", "c", time.time(), 1.0, {})])
            )
            for _ in range(3)  # as many as a's pool has threads
        ]
        waiting += units

        async def pool_taken() -> bool:
            return await b.run(waiting_on_locks) >= len(units)

        await eventually(pool_taken, timeout=30, what="a's units waiting on b's lock")
        # Renewals, not `leading` over a stretch of time: a renewal late on a loaded
        # machine loses the lease whatever the locks. Queued behind the units, the
        # renewal would wait until b's session is ended (UNIT_STALL_S, 15 s on), and
        # the units would be done by the time it went through.
        seen = [await b.run(lease_expiry)]

        async def renewed_twice() -> bool:
            if (expiry := await b.run(lease_expiry)) > seen[-1]:
                seen.append(expiry)
            return len(seen) > 2

        await eventually(renewed_twice, timeout=30, what="a's lease renewed twice")
        assert not any(unit.done() for unit in units), "a renewed only after its units"
    finally:
        resume.set()
        running.cancel()
        await asyncio.gather(running, *waiting, return_exceptions=True)


async def test_a_replica_frozen_inside_any_unit_frees_its_row_locks(
    replicas: list[HubStore],
) -> None:
    """Not only the lease: a replica frozen inside any unit held a device's row for as
    long as it stayed frozen, and every unit for that device waited behind it. Its session
    is ended once idle too long in a unit; the thawed replica's unit fails, and its next
    one runs on a fresh connection."""
    a, b = replicas
    now = time.time()
    await a.record_presence([HelloSeen("dev-1", "c", now, "generic", "1", 1.0, {}, "rt", [], 0, 0)])
    resume, frozen = threading.Event(), threading.Event()

    def touch_then_freeze(db: Any) -> None:
        db.execute("UPDATE devices SET last_seen = ? WHERE device_id = 'dev-1'", (now,))
        frozen.set()
        resume.wait(FROZEN_FOR_S)

    b_unit = asyncio.create_task(b.run(touch_then_freeze))
    try:
        assert await asyncio.to_thread(frozen.wait, 30)
        beat = HeartbeatSeen("dev-1", "c", time.time(), 1.0, {})
        # Frozen for 60 s; the unit's bound (15 s) ends its session well before.
        await asyncio.wait_for(a.record_presence([beat]), timeout=FROZEN_FOR_S - 10)
    finally:
        resume.set()
        (outcome,) = await asyncio.gather(b_unit, return_exceptions=True)
    assert isinstance(outcome, Exception)  # b's session was ended under it
    assert await b.run(lambda db: db.execute("SELECT 1").fetchone()[0]) == 1
