"""The agent's task inbox on a real SQLite store: what it accepts, the order it runs
tasks in, what survives a crash, and that a task leaves it exactly when its result is
stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from edge.store import AgentStore, Bounds, StoreWriteError, StreamFullError, inbox
from edge.store.errors import AppendDeclined
from edge.store.inbox import InboxTask, finish
from outpost.sqlite import Database

UNBOUNDED = Bounds(0, 0, 0)


def task(
    task_id: str, *, attempt: int = 1, priority: int = 5, deadline_in: float = 60
) -> InboxTask:
    now = time.time()
    return InboxTask(
        task_id=task_id,
        attempt=attempt,
        model="m",
        version="",
        input=[[1, 2], [3, 4]],
        dtype="int8",
        priority=priority,
        deadline=now + deadline_in,
        lease_until=now + 60,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AgentStore]:
    opened = AgentStore(
        tmp_path / "store.db", {"results": UNBOUNDED, "events": UNBOUNDED, "metrics": UNBOUNDED}
    )
    await opened.start()
    yield opened
    await opened.close()


async def test_accepts_once_refuses_when_full_and_keeps_the_newest_attempt(
    store: AgentStore,
) -> None:
    assert await store.inbox.put(task("tsk-a"), capacity=2) == "accepted"
    assert await store.inbox.put(task("tsk-a"), capacity=2) == "duplicate"
    assert await store.inbox.put(task("tsk-b"), capacity=2) == "accepted"
    assert await store.inbox.put(task("tsk-c"), capacity=2) == "full"
    assert await store.inbox.put(task("tsk-a", attempt=3), capacity=2) == "accepted"
    assert await store.inbox.put(task("tsk-a", attempt=2), capacity=2) == "superseded"
    claimed, _ = await store.inbox.claim()
    claimed_b, _ = await store.inbox.claim()
    assert {(t.task_id, t.attempt) for t in (claimed, claimed_b) if t} == {
        ("tsk-a", 3),
        ("tsk-b", 1),
    }


async def test_runs_highest_priority_then_earliest_deadline_and_drops_the_expired(
    store: AgentStore,
) -> None:
    for t in (
        task("tsk-low", priority=1),
        task("tsk-late-deadline", priority=7, deadline_in=120),
        task("tsk-soon", priority=7, deadline_in=30),
        task("tsk-gone", priority=9, deadline_in=-1),
    ):
        await store.inbox.put(t, capacity=10)

    order, dropped = [], []
    while True:
        claimed, stale = await store.inbox.claim()
        dropped += [t.task_id for t in stale]
        if claimed is None:
            break
        order.append(claimed.task_id)

    assert order == ["tsk-soon", "tsk-late-deadline", "tsk-low"]
    assert dropped == ["tsk-gone"]
    assert await store.inbox.depth() == (0, 3)


async def test_one_claim_takes_as_many_as_asked_in_run_order_and_counts_the_rest(
    store: AgentStore,
) -> None:
    for t in (
        task("tsk-low", priority=1),
        task("tsk-late-deadline", priority=7, deadline_in=120),
        task("tsk-soon", priority=7, deadline_in=30),
        task("tsk-gone", priority=9, deadline_in=-1),
    ):
        await store.inbox.put(t, capacity=10)

    first = await store.inbox.claim_many(2)
    assert [t.task_id for t in first.tasks] == ["tsk-soon", "tsk-late-deadline"]
    assert [t.task_id for t in first.stale] == ["tsk-gone"]
    assert first.pending == 1
    rest = await store.inbox.claim_many(5)
    assert ([t.task_id for t in rest.tasks], rest.stale, rest.pending) == (["tsk-low"], [], 0)
    assert await store.inbox.depth() == (0, 3)


async def test_after_a_crash_running_tasks_run_again(tmp_path: Path) -> None:
    bounds = {"results": UNBOUNDED, "events": UNBOUNDED, "metrics": UNBOUNDED}
    first = AgentStore(tmp_path / "store.db", bounds)
    await first.start()
    await first.inbox.put(task("tsk-a"), capacity=10)
    await first.inbox.put(task("tsk-b"), capacity=10)
    running, _ = await first.inbox.claim()
    assert running is not None
    await first.close()  # as if the agent died here: one running, one pending

    second = AgentStore(tmp_path / "store.db", bounds)
    await second.start()
    try:
        assert await second.inbox.depth() == (1, 1)
        assert await second.inbox.recover() == 1
        assert await second.inbox.depth() == (2, 0)
        claimed = {(await second.inbox.claim())[0].task_id for _ in range(2)}  # type: ignore[union-attr]
        assert claimed == {"tsk-a", "tsk-b"}
    finally:
        await second.close()


async def test_a_task_leaves_the_inbox_in_the_transaction_that_stores_its_result(
    store: AgentStore,
) -> None:
    await store.inbox.put(task("tsk-a"), capacity=10)
    claimed, _ = await store.inbox.claim()
    assert claimed is not None

    await store.append(
        "results",
        [{"kind": "task", "task_id": "tsk-a", "attempt": 1}],
        then=lambda db: finish(db, "tsk-a", 1),
    )

    assert await store.inbox.depth() == (0, 0)
    ((_, _, body),) = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)
    assert body["task_id"] == "tsk-a"


async def test_a_put_and_its_result_commit_together_and_the_result_only_if_it_started(
    store: AgentStore,
) -> None:
    """`first` runs in the append's transaction before its records, which are stored only
    if it answers True; its own writes commit either way, beside other appends of the
    same group."""
    outcomes: list[list[inbox.PutOutcome]] = []

    def put_first(db: Database) -> bool:
        outcomes.append(inbox.put_within(db, [task("tsk-a")], 10, time.time(), start=1))
        return outcomes[-1] == ["started"]

    def then(db: Database) -> None:
        finish(db, "tsk-a", 1)

    other = asyncio.ensure_future(store.append("events", [{"event": "beside"}]))
    await store.append("results", [{"task_id": "tsk-a"}], first=put_first, then=then)
    await other
    assert outcomes == [["started"]]
    assert await store.inbox.depth() == (0, 0)  # in and out with its result

    with pytest.raises(AppendDeclined):  # a redelivery: nothing of its result stored
        await store.append("results", [{"task_id": "tsk-a", "again": True}], first=put_first)
    assert outcomes[-1] == ["duplicate"]
    rows = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)
    assert [body for _, _, body in rows] == [{"task_id": "tsk-a"}]
    assert len(await store.batch("events", 0, max_records=10, max_bytes=1 << 20)) == 1


async def test_a_put_whose_result_finds_the_stream_full_stays_in_the_inbox_running(
    tmp_path: Path,
) -> None:
    full = AgentStore(
        tmp_path / "store.db",
        {"results": Bounds(1, 0, 0), "events": UNBOUNDED, "metrics": UNBOUNDED},
    )
    await full.start()
    try:
        await full.append("results", [{"n": 0}])

        def put_first(db: Database) -> bool:
            return inbox.put_within(db, [task("tsk-a")], 10, time.time(), start=1) == ["started"]

        with pytest.raises(StreamFullError):
            await full.append(
                "results",
                [{"task_id": "tsk-a"}],
                first=put_first,
                then=lambda db: finish(db, "tsk-a", 1),
            )
        assert await full.inbox.depth() == (0, 1)  # taken, its result to be retried
    finally:
        await full.close()


async def test_a_full_results_stream_keeps_the_task_in_the_inbox(tmp_path: Path) -> None:
    full = AgentStore(
        tmp_path / "store.db",
        {"results": Bounds(1, 0, 0), "events": UNBOUNDED, "metrics": UNBOUNDED},
    )
    await full.start()
    try:
        await full.append("results", [{"n": 0}])
        await full.inbox.put(task("tsk-a"), capacity=10)
        await full.inbox.claim()
        with pytest.raises(StreamFullError):
            await full.append(
                "results", [{"task_id": "tsk-a"}], then=lambda db: finish(db, "tsk-a", 1)
            )
        assert await full.inbox.depth() == (0, 1)  # still there, to be retried
    finally:
        await full.close()


async def test_a_newer_attempt_of_a_running_task_does_not_start_a_second_run(
    store: AgentStore,
) -> None:
    await store.inbox.put(task("tsk-a"), capacity=10)
    running, _ = await store.inbox.claim()
    assert running is not None

    assert await store.inbox.put(task("tsk-a", attempt=2), capacity=10) == "accepted"

    assert await store.inbox.depth() == (0, 1)  # still the one run
    assert (await store.inbox.claim())[0] is None
    assert await store.inbox.attempt("tsk-a") == 2  # the result will carry attempt 2


async def test_an_assignment_delivered_again_after_its_task_finished_does_not_run_again(
    store: AgentStore,
) -> None:
    # QoS 1 redelivers an assignment whose acknowledgement a broken link lost.
    await store.inbox.put(task("tsk-a"), capacity=1)
    await store.inbox.claim()
    await store.append("results", [{"task_id": "tsk-a"}], then=lambda db: finish(db, "tsk-a", 1))

    assert await store.inbox.put(task("tsk-a"), capacity=1) == "duplicate"
    assert (await store.inbox.claim())[0] is None
    assert await store.inbox.depth() == (0, 0)
    assert await store.inbox.cancel("tsk-a", 1) == "done"
    # The tombstone holds no room, and a newer attempt (the hub gave it again) runs.
    assert await store.inbox.put(task("tsk-b"), capacity=1) == "accepted"
    assert await store.inbox.put(task("tsk-a", attempt=2), capacity=2) == "accepted"
    assert await store.inbox.depth() == (2, 0)


async def test_only_the_newest_tombstones_are_kept(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "DONE_KEPT", 3)
    monkeypatch.setattr(inbox, "DONE_SLACK", 1)  # trimmed back to 3 once there are 5
    for n in range(5):
        await store.inbox.put(task(f"tsk-{n}"), capacity=10)
        await store.inbox.claim()
        await store.append(
            "results", [{"n": n}], then=partial(finish, task_id=f"tsk-{n}", attempt=1)
        )

    assert await store.inbox.put(task("tsk-1"), capacity=10) == "accepted"  # forgotten
    assert await store.inbox.put(task("tsk-2"), capacity=10) == "duplicate"


async def test_an_append_whose_hook_fails_fails_alone_not_the_group_it_shared(
    store: AgentStore,
) -> None:
    """Appends queued together share one transaction; one whose `then` fails (a task
    whose inbox holds a newer attempt, say) is retried alone with the others, so that only
    its producer hears of the failure."""
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def busy(db: Database) -> None:  # the store's thread, held until all three are queued
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()

    def refuse(db: Database) -> None:
        raise RuntimeError("refused in its transaction")

    holding = asyncio.create_task(store._write(busy))
    appends = [
        asyncio.create_task(store.append("results", [{"n": 1}])),
        asyncio.create_task(store.append("results", [{"n": 2}], then=refuse)),
        asyncio.create_task(store.append("events", [{"n": 3}])),
    ]
    async with asyncio.timeout(30):
        while len(store._queue) < 3:  # each append queued behind the held thread
            await asyncio.sleep(0.01)  # a poll with a deadline
    gate.set()
    await holding
    first, refused, events = await asyncio.gather(*appends, return_exceptions=True)

    assert isinstance(refused, StoreWriteError)
    assert isinstance(refused.__cause__, RuntimeError)
    assert not isinstance(first, BaseException)
    assert not isinstance(events, BaseException)
    assert (first.first_seq, events.first_seq) == (1, 1)
    rows = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)
    assert [body for _, _, body in rows] == [{"n": 1}]


async def test_an_assignment_delivered_again_after_its_cancel_does_not_run(
    store: AgentStore,
) -> None:
    """A cancel deleted the pending task: the same assignment redelivered (QoS 1) was
    taken as new and run, and the hub recorded its result as late."""
    await store.inbox.put(task("tsk-a"), capacity=2)
    assert await store.inbox.cancel("tsk-a", 1) == "dropped"

    assert await store.inbox.put(task("tsk-a"), capacity=2) == "duplicate"
    assert (await store.inbox.claim())[0] is None
    assert await store.inbox.depth() == (0, 0)
    assert await store.inbox.put(task("tsk-b"), capacity=1) == "accepted"  # holds no room
