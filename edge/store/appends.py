"""An append waiting for the store's writer thread, and how its producer is answered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.store.streams import Appended, Refused
from outpost.sqlite import Database

# When a producer is answered:
# - "synced": once its records are on the disk (the WAL fsynced): they survive a power cut.
# - "written": once its transaction is committed to the file (in the kernel's cache, not
#   yet synced): they survive a crash or kill of the agent at once, and a power cut once
#   the sync that follows has run (within `durable.SYNC_DELAY_S` and the sync's own time,
#   milliseconds). Until then nothing else takes them as durable: the uploader reads only
#   what is synced, and the confirmed mark (never ahead of the disk) waits for the sync.
Confirm = Literal["synced", "written"]

# Work done in the transaction that commits an append, only if the append is stored.
Then = Callable[[Database], None]


@dataclass
class Pending:
    stream: str
    bodies: list[bytes]
    done: asyncio.Future[Appended | Refused]
    then: Then | None = None
    confirm: Confirm = "synced"


def settle(done: asyncio.Future[Appended | Refused], outcome: Appended | Refused) -> None:
    if not done.done():  # a producer that gave up waiting (cancelled) is not answered
        done.set_result(outcome)


def fail(done: asyncio.Future[Appended | Refused], error: Exception) -> None:
    if not done.done():
        done.set_exception(error)
