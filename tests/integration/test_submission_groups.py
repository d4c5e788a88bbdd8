"""Submissions to the leading replica's dispatcher (hub/tasks/dispatcher.py) that arrive
while a transaction runs are queued and allocated together, on a real SQLite file and a
real PostgreSQL database: every task once, one bad submission failing alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig
from hub.store import HubStore
from hub.store.audit import AuditEntry
from hub.tasks.dispatcher import Dispatcher
from tests.databases import BACKENDS, database
from tests.integration.test_task_store import new, online
from tests.support import eventually

TASKS = 40


class CountingStore(HubStore):
    """The real store, counting its queue-and-allocate transactions."""

    transactions = 0

    async def create_and_allocate(self, *args: Any, **kwargs: Any) -> Any:
        self.transactions += 1
        return await super().create_and_allocate(*args, **kwargs)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = CountingStore(database(request, tmp_path))
    yield opened
    opened.close()


async def leading(store: HubStore) -> tuple[Dispatcher, list[str]]:
    """A dispatcher whose loop runs (as on the replica that leads), and the topics it sent."""
    sent: list[str] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(topic)

    dispatcher = Dispatcher(store, HubConfig(), publish, queue=store)
    return dispatcher, sent


async def run_while(dispatcher: Dispatcher, work: Callable[[], Awaitable[Any]]) -> Any:
    loop = asyncio.create_task(dispatcher.run())

    async def leads() -> bool:
        assert not loop.done(), loop
        return dispatcher._running

    try:
        # Leading: submissions go through the group.
        await eventually(leads, timeout=30, every=0.01, what="the dispatcher's loop to run")
        return await work()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_submissions_at_once_share_one_transaction_and_each_task_is_queued_once(
    store: CountingStore,
) -> None:
    await online(store, "dev-a", slots=2)
    dispatcher, sent = await leading(store)

    async def submit_all() -> None:
        await asyncio.gather(
            *(
                dispatcher.submit([new(f"tsk-{n:016x}")], time.time(), entry(f"tsk-{n:016x}"))
                for n in range(TASKS)
            )
        )
        async with asyncio.timeout(30):  # the assignments are sent after the answer
            while not sent:
                await asyncio.sleep(0.01)  # a poll with a deadline (the timeout above)

    await run_while(dispatcher, submit_all)

    # Each submission started before the first transaction did: all waited for it.
    assert store.transactions == 1
    states = [await store.task(f"tsk-{n:016x}") for n in range(TASKS)]
    assert all(task is not None for task in states)
    held = [t.task_id for t in states if t is not None and t.state == "assigned"]
    # What the device may hold, taken in the same transaction: one task at a time until it
    # has reported a latency, plus the work given ahead.
    room = 1 + HubConfig().task_prefetch
    assert len(held) == room
    assert dispatcher.outcomes["assigned"] == room
    assert sent == ["outpost/v1/dev/dev-a/down/tasks"]  # in one message
    # Each submission's audit entry, committed with its task: once each.
    assert sorted(await audited(store)) == [f"tsk-{n:016x}" for n in range(TASKS)]


async def test_a_bad_submission_in_a_group_fails_alone(store: CountingStore) -> None:
    await store.create_tasks([new("tsk-taken")], now=time.time())
    dispatcher, _ = await leading(store)

    results = await run_while(
        dispatcher,
        lambda: asyncio.gather(
            dispatcher.submit([new("tsk-0000000000000001")], time.time(), entry("one")),
            dispatcher.submit([new("tsk-taken")], time.time(), entry("taken")),  # id in use
            dispatcher.submit([new("tsk-0000000000000002")], time.time(), entry("two")),
            return_exceptions=True,
        ),
    )

    # The group's transaction failed on the taken id and was rolled back; each submission
    # was then queued alone, and only the one that repeats an id was refused.
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], Exception)
    for task_id in ("tsk-0000000000000001", "tsk-0000000000000002"):
        task = await store.task(task_id)
        assert task is not None
        assert task.state == "queued"
    page = await store.tasks_page(limit=10)
    assert sorted(t.task_id for t in page) == [
        "tsk-0000000000000001",
        "tsk-0000000000000002",
        "tsk-taken",
    ]
    # The refused one's entry went with its rollback (the API's guard audits its 500).
    assert sorted(await audited(store)) == ["one", "two"]


async def test_a_submission_to_a_replica_that_does_not_lead_is_audited_with_its_tasks(
    store: CountingStore,
) -> None:
    dispatcher, _ = await leading(store)  # its loop not running: queued alone

    await dispatcher.submit([new("tsk-0000000000000003")], time.time(), entry("queued"))

    assert store.transactions == 0
    assert await store.task("tsk-0000000000000003") is not None
    assert await audited(store) == ["queued"]


def entry(first: str) -> AuditEntry:
    """A submission's audit entry, named by `first` in its detail."""
    return AuditEntry(
        at=time.time(),
        subject="submitter",
        role="operator",
        method="POST",
        path="/api/v1/tasks",
        action="task.submit",
        status=202,
        detail=json.dumps({"first": first}),
    )


async def audited(store: HubStore) -> list[str]:
    return [json.loads(e.detail)["first"] for e in await store.audit_log(before=None, limit=100)]
