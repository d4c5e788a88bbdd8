"""The uploader's side of the agent's store: batches to send, the hub's acknowledgements,
and the numbering that follows the hub's (alignment). Part of `AgentStore`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from edge.store import confirmed, sent, streams
from edge.store.cipher import RecordCipher
from edge.store.durable import LAZY_SYNC_S, Durability, sync_file
from edge.store.errors import READ_ERRORS, StoreReadError, StoreWriteError
from edge.store.tail import Tail
from outpost.sqlite import Database, SerialDatabase, soft_state

T = TypeVar("T")


class StoreUploads:
    """What the uploader (and the courier) ask of the store; `AgentStore` sets these up."""

    path: Path
    _db: SerialDatabase[Database]
    _durable: Durability
    _tail: Tail
    _cipher: RecordCipher | None
    _generation: int  # of the numbering each commit leaves (writer thread only)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a writing `fn` on the writer thread; a full or failing disk (even a delete
        needs room in the WAL) raises `StoreWriteError`, which callers survive."""
        try:
            return await self._db.run(fn, *args)
        except (*READ_ERRORS, OSError) as exc:  # a renumbering reads records, and syncs
            raise StoreWriteError(exc, "change") from exc

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a reading `fn` on the store's thread; a failing disk or a damaged record
        raises `StoreReadError`, which callers survive (they look again later)."""
        try:
            return await self._db.run(fn, *args)
        except READ_ERRORS as exc:
            raise StoreReadError(exc) from exc

    async def batch(
        self, stream: str, after_seq: int, *, max_records: int, max_bytes: int
    ) -> list[tuple[int, float, Any]]:
        """The next records after `after_seq`: (seq, ts, body)."""
        rows = await self.batch_packed(
            stream, after_seq, max_records=max_records, max_bytes=max_bytes
        )
        return [(seq, ts, msgspec.msgpack.decode(body)) for seq, ts, body in rows]

    async def batch_packed(
        self, stream: str, after_seq: int, *, max_records: int, max_bytes: int
    ) -> list[tuple[int, float, bytes]]:
        """The next records after `after_seq` that are on the disk, bodies as stored
        (msgpack): what is sent. From memory when it holds them (`tail`), else the file."""
        through = self._durable.limit(stream)
        rows = self._tail.batch(stream, after_seq, through, max_records, max_bytes)
        if rows is not None:
            return rows
        return await self._read(self._read_batch, stream, after_seq, max_records, max_bytes)

    def readable_through(self, stream: str) -> int:
        """The highest number of `stream` that `batch` may return: on the disk (no hop)."""
        return self._durable.limit(stream)

    def _read_batch(
        self, db: Database, stream: str, after: int, records: int, size: int
    ) -> list[tuple[int, float, bytes]]:
        through = self._durable.limit(stream)  # read now: a sync may have moved it
        rows = streams.read_batch(db, stream, after, records, size, self._cipher, through)
        if rows and stream in sent.TRACKED and rows[-1][0] > sent.mark(db, stream):
            # Before the batch leaves this thread, and synced: a power cut after it was
            # sent must not let a roll-up merge what the hub holds (see `sent`).
            with db.conn:
                db.conn.execute("BEGIN IMMEDIATE")
                sent.raise_to(db, stream, rows[-1][0])
                numbering = confirmed.current(db)
            self._generation += 1
            self._durable.synced(self._generation, numbering)
        return rows

    async def acknowledge(self, stream: str, hwm: int) -> int:
        """The hub holds everything of `stream` up to `hwm`: forget it."""
        return await self._write(self._acknowledge, stream, hwm)

    def _acknowledge(self, db: Database, stream: str, hwm: int) -> int:
        # Not synced, and nobody waits for its sync: an acknowledgement a power cut
        # takes back only sends those records again, which the hub takes as duplicates.
        # The copy in memory first: a mark that renumbers (past every number given)
        # leaves none of it, so no read meets old numbers once the file has new ones.
        self._tail.acknowledged(stream, hwm)
        with soft_state(db), db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            before = confirmed.current(db)[stream].last
            deleted = streams.acknowledge(db, stream, hwm, self._cipher)
            numbering = confirmed.current(db)
        self._generation += 1
        if numbering[stream].last == before:
            self._durable.unsynced(self._generation, numbering, within_s=LAZY_SYNC_S)
        else:  # renumbered past a mark beyond its own numbers (rare): synced at once
            sync_file(f"{self.path}-wal")
            self._durable.synced(self._generation, numbering)
        return deleted

    async def align(self, stream: str, hub_hwm: int) -> int:
        """Renumber a fresh stream after the hub's mark (see `streams.align`)."""
        return await self._write(self._align, stream, hub_hwm)

    def _align(self, db: Database, stream: str, hub_hwm: int) -> int:
        self._tail.forget([stream])  # renumbered: its copy goes before the file changes
        changes = db.conn.total_changes
        with db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            shift = streams.align(db, stream, hub_hwm, self._cipher)
            numbering = confirmed.current(db)
        if db.conn.total_changes != changes:  # else no sync: a stream aligned already
            self._generation += 1
            self._durable.synced(self._generation, numbering)
        return shift

    async def adopt_numbering(self, stream: str) -> bool:
        """Align `stream` as it is numbered (see `streams.adopt_numbering`)."""
        return await self._write(self._adopt_numbering, stream)

    def _adopt_numbering(self, db: Database, stream: str) -> bool:
        with db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            return streams.adopt_numbering(db, stream)

    async def store_id(self) -> str:
        """This store's random id (a store made anew gets another)."""
        return await self._read(streams.store_id)

    async def aligned(self) -> set[str]:
        """Streams whose numbering already follows the hub's."""
        return await self._read(streams.aligned_streams)

    async def cursors(self) -> dict[str, tuple[int, int]]:
        """Per stream: (acknowledged seq, last assigned seq)."""
        rows = await self._read(
            lambda db: db.execute("SELECT stream, acked_seq, next_seq FROM streams").fetchall()
        )
        return {r["stream"]: (r["acked_seq"], r["next_seq"] - 1) for r in rows}
