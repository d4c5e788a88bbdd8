"""The task inbox's calls on the agent's store: each one unit of work on the store's
writer thread (the SQL is in inbox.py), its failures the store's (`StoreWriteError`,
`StoreReadError`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from edge.store import inbox
from edge.store.inbox import Claimed, InboxTask, PutOutcome
from outpost.sqlite import Database, soft_state

T = TypeVar("T")


class Run(Protocol):
    """The store's `_write` or `_read`: `fn(db, *args)` on its thread."""

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T: ...


class StoreInbox:
    """`store.inbox`: the inbox's units of work, run as the store runs its own."""

    def __init__(
        self,
        write: Run,
        read: Run,
        unsynced_commit: Callable[[Database], int],
        when_settled: Callable[[int], asyncio.Future[None]],
    ) -> None:
        self._write = write
        self._read = read
        self._unsynced_commit = unsynced_commit
        self._when_settled = when_settled

    async def put(self, task: InboxTask, *, capacity: int) -> PutOutcome:
        return await self._write(inbox.put, task, capacity, time.time())

    async def put_many(
        self, tasks: list[InboxTask], *, capacity: int, start: int = 0
    ) -> list[PutOutcome]:
        return await self._write(inbox.put_many, tasks, capacity, time.time(), start)

    async def put_written(
        self, tasks: list[InboxTask], *, capacity: int, start: int
    ) -> tuple[list[PutOutcome], asyncio.Future[None]]:
        """`put_many`, answered once committed, before the disk has it, with a future
        done once it has. For assignments that start at once: their results' synced
        commit takes the put to the disk with it (one sync where there were two), and
        the sync thread does within milliseconds if they take longer."""
        outcomes, generation = await self._write(self._put_written, tasks, capacity, start)
        return outcomes, self._when_settled(generation)

    def _put_written(
        self, db: Database, tasks: list[InboxTask], capacity: int, start: int
    ) -> tuple[list[PutOutcome], int]:
        with soft_state(db):
            outcomes = inbox.put_many(db, tasks, capacity, time.time(), start)
        return outcomes, self._unsynced_commit(db)

    async def attempt(self, task_id: str) -> int | None:
        return await self._read(inbox.attempt_of, task_id)

    async def claim(self) -> tuple[InboxTask | None, list[InboxTask]]:
        return await self._write(inbox.claim, time.time())

    async def claim_many(self, limit: int) -> Claimed:
        return await self._write(inbox.claim_many, time.time(), limit)

    async def cancel(self, task_id: str, attempt: int) -> str:
        return await self._write(inbox.cancel, task_id, attempt)

    async def recover(self) -> int:
        return await self._write(inbox.recover)

    async def depth(self) -> tuple[int, int]:
        return await self._read(inbox.depth)
