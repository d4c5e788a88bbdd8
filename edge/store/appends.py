"""An append waiting for the store's writer thread, and how its producer is answered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.store import confirmed, streams
from edge.store.cipher import RecordCipher
from edge.store.streams import Appended, Bounds, Refused
from edge.store.wear import Unrecorded
from outpost.sqlite import Database, soft_state

# When a producer is answered:
# - "synced": once its records are on the disk (the WAL fsynced): they survive a power cut.
# - "written": once its transaction is committed to the file (in the kernel's cache, not
#   yet synced): they survive a crash or kill of the agent at once, and a power cut once
#   the sync that follows has run (within `durable.SYNC_DELAY_S` and the sync's own time,
#   milliseconds). Until then nothing else takes them as durable: the uploader reads only
#   what is synced, and the confirmed mark (never ahead of the disk) waits for the sync.
Confirm = Literal["synced", "written"]

# Work done in the transaction that commits an append, only if the append is stored.
Then = Callable[[Database], object]  # what it returns is not used
# Work done first in that transaction; the records are stored only if it answers True
# (its own writes commit either way): a task put in the inbox and its result, at once.
First = Callable[[Database], bool]


@dataclass(frozen=True)
class Declined:
    """An append whose `first` answered no: none of its records were stored."""


Outcome = Appended | Refused | Declined


@dataclass
class Pending:
    stream: str
    bodies: list[bytes]
    done: asyncio.Future[Outcome]
    then: Then | None = None
    confirm: Confirm = "synced"
    first: First | None = None


def settle(done: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not done.done():  # a producer that gave up waiting (cancelled) is not answered
        done.set_result(outcome)


def fail(done: asyncio.Future[Outcome], error: Exception) -> None:
    if not done.done():
        done.set_exception(error)


def store_group(
    db: Database,
    group: list[Pending],
    bounds: dict[str, Bounds],
    cipher: RecordCipher | None,
    now: float,
    expire: bool,
    unsynced: bool,
    wear: Unrecorded,
) -> tuple[list[Outcome], confirmed.Marks]:
    """Store `group` in one transaction (synced unless `unsynced`), each append's `first`
    and `then` with it; return each append's outcome and the numbering the commit left
    (writer thread)."""
    with contextlib.ExitStack() as stack:
        if unsynced:
            stack.enter_context(soft_state(db))
        with db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            wear.record(db)
            outcomes: list[Outcome] = []
            for item in group:
                if item.first is not None and not item.first(db):
                    outcomes.append(Declined())
                    continue
                outcome: Outcome = streams.append(
                    db, item.stream, item.bodies, bounds[item.stream], cipher, now
                )
                if item.then is not None and isinstance(outcome, Appended):
                    item.then(db)
                outcomes.append(outcome)
            if expire:
                streams.expire(db, bounds, now)
            # Read inside the transaction (a failing read fails it, before anything is
            # confirmed), written once it is durable, before anyone is told.
            return outcomes, confirmed.current(db)
