"""The agent's local store: upload streams kept in SQLite until the hub holds them.

Producers `append`; their records get per-stream sequence numbers and are confirmed
only once committed (group commit: appends that arrive together share one transaction
and one fsync). The uploader reads `batch`es and applies the hub's `acknowledge`.

A producer that must not wait for the disk (an inference whose answer is recorded) asks
to be answered once its records are `written`: the transaction is committed to the
file without a sync, the producer is answered, and the sync follows at once on the same
thread, before anything else reads or numbers those records (see `Confirm`).
After every commit that moves a stream's numbering, the store records how far it
reached in a file beside the database (`confirmed`), which the next open checks the
database against (`recovery`): a store that lost confirmed commits is set aside.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from edge.store import confirmed, sealing, wear
from edge.store.appends import (
    Confirm,
    Declined,
    First,
    Outcome,
    Pending,
    Then,
    fail,
    settle,
    store_group,
)
from edge.store.cipher import RecordCipher
from edge.store.durable import Durability, sync_file
from edge.store.errors import (
    AppendDeclined,
    StoreKeyError,
    StoreReadError,
    StoreWriteError,
    StreamFullError,
)
from edge.store.inboxcalls import StoreInbox
from edge.store.recovery import open_store
from edge.store.stats import read_stats
from edge.store.streams import STREAMS, Appended, Bounds, Refused
from edge.store.tail import Tail
from edge.store.uploads import StoreUploads
from outpost.sqlite import Database, SerialDatabase, StoreClosedError

logger = logging.getLogger(__name__)

__all__ = [
    "STREAMS",
    "AgentStore",
    "Appended",
    "Bounds",
    "RecordCipher",
    "StoreKeyError",
    "StoreReadError",
    "StoreWriteError",
    "StreamFullError",
]

MAX_GROUP_RECORDS = 5000  # appends committed together, at most
# Streams whose newest records the uploader reads from memory (`tail`): not metrics, whose
# older records a full stream rolls up in place, inside the append that made room.
TAILED = frozenset(STREAMS) - {"metrics"}

EXPIRE_EVERY_S = 60.0


class AgentStore(StoreUploads):
    """One writer thread, fed by a group-committing queue."""

    def __init__(
        self,
        path: Path,
        bounds: dict[str, Bounds],
        cipher: RecordCipher | None = None,
        *,
        former: RecordCipher | None = None,
    ) -> None:
        """Open the store at `path`, its bodies sealed under `cipher` (None: plain);
        `former` is the key records may be sealed under when encryption was switched
        off (see `sealing`, whose `StoreKeyError` this raises)."""
        opened = open_store(path, cipher)
        # Where a damaged predecessor went, and (if its numbering was recorded) how many
        # confirmed records per stream the hub was not known to hold: an event in the
        # events stream and the `lost.*` counters say so too.
        self.set_aside = opened.set_aside
        self.lost = opened.lost
        wal = f"{path}-wal"
        try:
            sealing.settle(opened.db, path, cipher, former)
            if os.path.exists(wal):
                # Commits a killed agent left unsynced are on the disk before anything
                # (the mark, an upload) takes them as durable.
                sync_file(wal)
            self._marks = confirmed.MarkFile(confirmed.path_for(path))
            self._durable = Durability(
                wal, self._marks, confirmed.current(opened.db), self._on_synced
            )
        except (OSError, sqlite3.Error, StoreKeyError):
            opened.db.conn.close()
            raise
        self._generation = 0  # of the numbering each commit leaves (writer thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db = SerialDatabase(opened.db, "agent", close=opened.db.conn.close)
        self._bounds = bounds
        self._cipher = cipher
        # Appends waiting for the writer thread, which takes all there are at once (group
        # commit); `_drain_due` says a drain is queued on it (reset by the thread before
        # it takes them, so none is left behind).
        self._queue: collections.deque[Pending] = collections.deque()
        self._drain_due = False
        self._closing = False
        self._last_expire = 0.0
        self._wear = wear.Unrecorded()
        self._tail = Tail()  # changed on the writer thread only, in step with the file
        self._db.run_sync(lambda _: self._wear.meter.start())  # on the writer thread, as later
        self.appended = asyncio.Event()  # set whenever new records are on the disk
        self.path = path
        self.inbox = StoreInbox(
            self._write, self._read, self._unsynced_commit, self._durable.when_settled
        )

    @property
    def tail_hits(self) -> int:
        """Reads of records answered from memory, not from the file (see `tail`)."""
        return self._tail.hits

    def set_bounds(self, bounds: dict[str, Bounds]) -> None:
        """New bounds from policy; the next commit uses them."""
        self._bounds = bounds

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Commit what is queued, then close; safe to call twice."""
        if not self._closing:
            self._closing = True
            try:
                # Runs after every drain queued before it: the queue is committed.
                await self._db.run(self._flush_wear)
            except sqlite3.Error as exc:  # a full disk must not hide why the agent stops
                logger.warning("wear counters not saved at close: %s", exc)
            except StoreClosedError:
                pass
        self._durable.close()
        self._db.close()
        self._marks.close()

    def _on_synced(self) -> None:
        """Unsynced commits reached the disk (on the sync thread): wake the uploader."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.appended.set)

    def _flush_wear(self, db: Database) -> None:
        self._wear.read_now()
        with db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            self._wear.record(db, final=True)

    # ---------------------------------------------------------------- producers

    async def append(
        self,
        stream: str,
        bodies: Sequence[Any],
        *,
        then: Then | None = None,
        confirm: Confirm = "synced",
        first: First | None = None,
    ) -> Appended:
        """Store records; return their sequence numbers once they are on disk (or, with
        `confirm="written"`, once committed to the file: see `Confirm`).

        `then` runs in the same transaction when the records are stored (a task leaves
        the inbox exactly when its result enters the results stream); `first` runs in it
        before them, and only if it answers True are they stored (else `AppendDeclined`)."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r} (streams: {', '.join(STREAMS)})")
        if self._closing:
            raise StoreClosedError("the store is closed")
        packed = [msgspec.msgpack.encode(b) for b in bodies]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        self._queue.append(Pending(stream, packed, done, then, confirm, first))
        if not self._drain_due:
            self._drain_due = True
            self._db.submit(self._drain, loop)
        try:
            outcome = await done
        except Exception as exc:
            # The transaction rolled back: the file holds what it held before. Not only
            # SQLite's errors: a damaged record met while rolling the stream up fails the
            # commit too, and callers handle one kind of refusal.
            raise StoreWriteError(exc) from exc
        if isinstance(outcome, Refused):
            raise StreamFullError(stream, outcome.reason)
        if isinstance(outcome, Declined):
            raise AppendDeclined(stream)
        return outcome

    def _drain(self, db: Database, loop: asyncio.AbstractEventLoop) -> None:
        """Commit every queued append, `MAX_GROUP_RECORDS` at a time (writer thread)."""
        self._drain_due = False  # before taking: an append after this queues a drain
        while self._queue:
            group: list[Pending] = []
            count = 0
            while self._queue and count < MAX_GROUP_RECORDS:
                item = self._queue.popleft()
                group.append(item)
                count += len(item.bodies)
            expire = time.monotonic() - self._last_expire > EXPIRE_EVERY_S
            if expire:
                self._last_expire = time.monotonic()
            self._commit_and_tell(db, group, expire, loop)

    def _commit_and_tell(
        self, db: Database, group: list[Pending], expire: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Commit `group` and answer each producer; should the commit fail, each append
        again alone, so that what failed it (one append's values, its `first` or `then`)
        fails only that append's producer (writer thread)."""
        unsynced = all(item.confirm == "written" for item in group)
        changes = db.conn.total_changes
        now = time.time()
        try:
            outcomes, numbering = self._commit(db, group, expire, unsynced, now)
        except Exception as exc:  # raised before or by the commit: nothing was stored
            if len(group) > 1:
                for item in group:
                    self._commit_and_tell(db, [item], expire, loop)
                return
            logger.exception("committing %d records failed", len(group[0].bodies))
            loop.call_soon_threadsafe(fail, group[0].done, exc)
            return
        # Committed: whatever fails from here on must not store the group again.
        synced = not unsynced and db.conn.total_changes != changes
        try:
            self._after_commit(group, outcomes, numbering, now, unsynced=unsynced, synced=synced)
        except Exception:
            logger.exception("bookkeeping after committing %d appends failed", len(group))
        try:
            for item, outcome in zip(group, outcomes, strict=True):
                loop.call_soon_threadsafe(settle, item.done, outcome)
            if synced:  # else the sync thread says so once they are on the disk
                loop.call_soon_threadsafe(self.appended.set)
        except RuntimeError:  # the loop closed: nobody is waiting for an answer
            logger.warning("%d appends committed after the event loop closed", len(group))

    def _commit(
        self, db: Database, group: list[Pending], expire: bool, unsynced: bool, now: float
    ) -> tuple[list[Outcome], confirmed.Marks]:
        """Commit `group` (synced unless every producer waits only for `written`); return
        each append's outcome and the numbering the commit left."""
        if expire:  # forgotten before the file changes: no read sees a copy it outdated
            self._tail.forget(s for s in TAILED if s in self._bounds and self._bounds[s].max_age_s)
        return store_group(db, group, self._bounds, self._cipher, now, expire, unsynced, self._wear)

    def _after_commit(
        self,
        group: list[Pending],
        outcomes: list[Outcome],
        numbering: confirmed.Marks,
        now: float,
        *,
        unsynced: bool,
        synced: bool,
    ) -> None:
        """Record what a group's commit stored: in memory (`tail`), for the uploader and
        the mark (`durable`), and in the wear counters."""
        for item, outcome in zip(group, outcomes, strict=True):
            if item.stream in TAILED and isinstance(outcome, Appended):
                self._tail.added(item.stream, outcome.first_seq, now, item.bodies)
        self._generation += 1
        if unsynced:
            self._durable.unsynced(self._generation, numbering)
        elif synced:
            self._durable.synced(self._generation, numbering)
        # Else a commit that wrote nothing (every append declined): SQLite wrote no frame
        # to its log and so synced nothing, and earlier commits wait for their own sync.
        stored = sum(
            len(i.bodies) for i, o in zip(group, outcomes, strict=True) if isinstance(o, Appended)
        )
        self._wear.committed(sum(len(b) for i in group for b in i.bodies), stored)

    def _unsynced_commit(self, db: Database, within_s: float | None = None) -> int:
        """A commit just made without a sync, left to the sync thread (writer thread):
        its generation, whose `when_settled` is done once it is on the disk."""
        self._generation += 1
        self._durable.unsynced(self._generation, confirmed.current(db), within_s=within_s)
        return self._generation

    async def stats(self) -> dict[str, Any]:
        """Fill of each stream and every counter (evictions, roll-ups, refusals, wear)."""
        return await self._read(self._stats)

    def _stats(self, db: Database) -> dict[str, Any]:
        self._wear.read_now()
        return read_stats(db, self._wear, self._bounds)
