"""Drain the store to the hub: oldest first, results before events before metrics, in
bounded batches with a bounded number in flight, deleting only what the hub acknowledged.
How a batch is encoded (plain or packed) is `edge.batchencoder`'s business.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from edge.batchencoder import BatchEncoder, Row
from edge.batchsize import MAX_PATIENCE_S, BatchBudget
from edge.config import Sync
from edge.pacing import ByteRate, parse_windows, seconds_until_open
from edge.store import AgentStore, StoreReadError, StoreWriteError
from outpost import wire
from outpost.aio import wait_event

T = TypeVar("T")

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
IDLE_CHECK_S = 1.0  # how often an idle uploader looks again (ack timeouts, windows)


@dataclass
class _InFlight:
    stream: str
    to_seq: int
    sent_at: float
    full: bool  # it used its budget: a quick ack says a larger one would pass too


@dataclass(frozen=True)
class _Ahead:
    """A full batch read while the window was full, sent when a slot frees if the
    stream is still due there (`after` is still where it stands)."""

    stream: wire.Stream
    after: int
    rows: list[Row]


class Uploader:
    """One per agent; `run` drives it for the life of one MQTT connection."""

    def __init__(self, store: AgentStore, device_id: str, sync: Sync) -> None:
        self._store = store
        self._sync = sync
        self._windows = parse_windows(sync.windows)
        self._rate = ByteRate(sync.rate_bytes_per_s)
        self._sent: dict[str, int] = {}
        self._acked: dict[str, int] = {}
        self._in_flight: list[_InFlight] = []
        # Kept across connections: what the link carried is the best guess for the next.
        self.budget = BatchBudget(sync.batch_bytes, sync.in_flight, sync.ack_timeout_s)
        # Publishes handed to the client and not yet confirmed by the broker: the next
        # batch is read and encoded meanwhile. The first failure ends `run`, as an
        # awaited publish's would.
        self._publishing: set[asyncio.Future[None]] = set()
        self._publish_failed: BaseException | None = None
        self._ahead: _Ahead | None = None
        self._last_batch: dict[str, float] = {}  # when each stream last sent one
        self._hold_until = 0.0  # a lingering batch is due then (0: none lingers)
        self._progress = asyncio.Event()
        self._aligned: set[str] = set()
        self._last_read_error = ""
        self.encoder = BatchEncoder(device_id)  # plain or packed; counts what went

    def set_pacing(self, rate_bytes_per_s: int, windows: list[str]) -> None:
        """New pacing from policy (windows already validated)."""
        self._rate.retune(rate_bytes_per_s)  # the send waiting on the old cap too
        self._windows = parse_windows(windows)

    async def run(self, publish: Publish, ask_marks: Callable[[], Awaitable[None]]) -> None:
        """Send until cancelled (the connection ended); resume from the last ack.

        `ask_marks` says hello again, for when the hub's answer to the first was lost.
        """
        await self._wait_aligned(ask_marks)
        cursors = await self._until_read(self._store.cursors)
        self._acked = {s: acked for s, (acked, _) in cursors.items()}
        self._sent = dict(self._acked)
        self._in_flight.clear()
        self._ahead = None
        self._publish_failed = None
        try:
            await self._drive(publish)
        finally:
            for pending in self._publishing:
                pending.cancel()
            self._publishing.clear()

    async def _drive(self, publish: Publish) -> None:
        while True:
            if self._publish_failed is not None:
                raise self._publish_failed
            wait = seconds_until_open(self._windows, dt.datetime.now())
            if wait:
                logger.info("outside the sync windows; next opens in %.0f s", wait)
                await asyncio.sleep(min(wait, 60.0))  # re-check: the clock may move
                continue
            # Cleared before looking, not after: an ack or an append that arrives while
            # this pass awaits the store is not missed by the wait below.
            self._progress.clear()
            self._store.appended.clear()
            self._resend_if_stalled()
            if len(self._in_flight) < self._sync.in_flight:
                if await self._send_next(publish):
                    continue
            elif self._ahead is None and await self._read_ahead():
                # The window was full: the next batch is read while the hub works on
                # those in flight, and goes the moment an ack frees a slot.
                continue
            waiters = [
                asyncio.ensure_future(self._progress.wait()),
                asyncio.ensure_future(self._store.appended.wait()),
            ]
            timeout = IDLE_CHECK_S
            if self._hold_until and len(self._in_flight) < self._sync.in_flight:
                # A short batch lingers: look again when it is due. With the window full
                # only an ack lets a batch go, and a hold that lapsed would only spin.
                timeout = min(timeout, max(0.0, self._hold_until - time.monotonic()))
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _wait_aligned(self, ask_marks: Callable[[], Awaitable[None]]) -> None:
        """Send nothing from a fresh store until the hub said where its numbers stand.

        The hub answers every hello with its mark for each stream; `on_ack` aligns.
        """
        self._aligned = await self._until_read(self._store.aligned)
        patience = self._sync.ack_timeout_s  # longer at each ask, as resends (batchsize)
        while not self._aligned.issuperset(wire.STREAMS):
            self._progress.clear()
            if not await wait_event(self._progress, patience):
                logger.warning(
                    "the hub has not said where %s stand; asking again",
                    ", ".join(sorted(set(wire.STREAMS) - self._aligned)),
                )
                await ask_marks()
                patience = max(self._sync.ack_timeout_s, min(MAX_PATIENCE_S, patience * 2))

    async def on_ack(self, ack: wire.Ack) -> None:
        """Apply the hub's acknowledgement: delete what it holds; resend after a gap."""
        self.budget.heard()
        stream = ack.stream
        if stream not in self._aligned:
            try:
                if ack.numbered_by and ack.numbered_by == await self._store.store_id():
                    # The hub took this store's records by courier bundle, in this
                    # store's own numbers: moving them after its mark would send them
                    # again as new ones.
                    await self._store.adopt_numbering(stream)
                    shift = 0
                else:
                    shift = await self._store.align(stream, ack.hwm)
            except (StoreReadError, StoreWriteError) as exc:
                # Still unaligned: the next hello's answer tries again.
                logger.warning("could not align %s after %d: %s", stream, ack.hwm, exc.reason)
                return
            self._aligned.add(stream)
            if shift:
                logger.warning(
                    "the hub holds %s up to %d from an earlier store; numbering "
                    "this store's records after it",
                    stream,
                    ack.hwm,
                )
        # The window first: the next batch need not wait for the delete below.
        acked: list[_InFlight] = []
        kept: list[_InFlight] = []
        for f in self._in_flight:
            (acked if f.stream == stream and f.to_seq <= ack.hwm else kept).append(f)
        self._in_flight = kept
        now = time.monotonic()
        self.budget.acked([(now - f.sent_at, f.full) for f in acked])
        if ack.gap:
            logger.warning(
                "hub refused a gap in %s after %d; resending from there", stream, ack.hwm
            )
            # From the hub's mark, even below our own ack (a hub restored from a
            # backup): the batch then covers numbers we no longer hold, and says so.
            self._sent[stream] = ack.hwm
            self._in_flight = [f for f in self._in_flight if f.stream != stream]
        self._progress.set()
        if ack.hwm > self._acked.get(stream, 0):
            try:
                await self._store.acknowledge(stream, ack.hwm)
                self._acked[stream] = ack.hwm
            except StoreWriteError as exc:
                # Acks are cumulative: the next one deletes these too. Stopping the
                # agent here would only restart it into the same full disk.
                logger.warning("could not forget %s up to %d: %s", stream, ack.hwm, exc.reason)

    async def _until_read(self, read: Callable[[], Awaitable[T]]) -> T:
        """`read` the store, looking again while it fails (a failing disk)."""
        while True:
            try:
                return await read()
            except StoreReadError as exc:
                self._unreadable(exc)
                await asyncio.sleep(IDLE_CHECK_S)

    def _unreadable(self, exc: StoreReadError) -> None:
        if exc.reason != self._last_read_error:  # once per distinct fault, not per look
            logger.error("uploader: %s; looking again", exc.reason)
            self._last_read_error = exc.reason

    async def _send_next(self, publish: Publish) -> bool:
        now = time.monotonic()
        self._hold_until = 0.0
        for stream in wire.STREAMS:
            after = self._sent.get(stream, 0)
            waiting = self._store.readable_through(stream) - after
            if waiting <= 0:
                continue  # nothing to read: no trip to the store's thread
            due = self._last_batch.get(stream, 0.0) + self._sync.linger_ms / 1000
            if waiting < self._sync.batch_records and now < due and self._flying(stream):
                # A short batch waits for more records while the stream's last one is
                # unacknowledged (its ack, or the linger, ends the wait): a quiet stream's
                # record (a task's result) goes at once, a busy one's go together.
                self._hold_until = min(self._hold_until or due, due)
                continue
            ahead, self._ahead = self._ahead, None
            if ahead is not None and (ahead.stream, ahead.after) == (stream, after):
                rows: list[Row] | None = ahead.rows
            else:
                rows = await self._read(stream, after)  # None: unreadable, this stream waits
            if not rows:
                continue
            await self._send(publish, stream, after, rows)
            return True
        return False

    async def _read_ahead(self) -> bool:
        """Read the batch that goes next if it is a full one; whether one was read."""
        for stream in wire.STREAMS:
            after = self._sent.get(stream, 0)
            waiting = self._store.readable_through(stream) - after
            if waiting <= 0:
                continue
            if waiting < self._sync.batch_records:
                return False  # short: it may linger and grow, so it is read when due
            rows = await self._read(stream, after)
            if not rows or self._sent.get(stream, 0) != after:
                return False  # a gap or a resend moved the stream meanwhile
            self._ahead = _Ahead(stream, after, rows)
            return True
        return False

    async def _read(self, stream: wire.Stream, after: int) -> list[Row] | None:
        try:
            return await self._store.batch_packed(
                stream,
                after,
                max_records=self._sync.batch_records,
                max_bytes=self.budget.bytes,
            )
        except StoreReadError as exc:
            self._unreadable(exc)
            return None

    async def _send(
        self,
        publish: Publish,
        stream: wire.Stream,
        after: int,
        rows: list[Row],
    ) -> None:
        batch = self.encoder.encode(stream, after, rows)
        await self._rate.take(len(batch.payload))
        self._sent[stream] = batch.to_seq
        self._last_batch[stream] = time.monotonic()
        full = self.budget.full(batch.body_bytes, batch.rows, self._sync.batch_records)
        self._in_flight.append(_InFlight(stream, batch.to_seq, time.monotonic(), full))
        # Not awaited here: the broker's PUBACK takes a round trip, in which the next
        # batch is read and encoded. Publishes go out in the order they are started.
        pending = asyncio.ensure_future(publish(batch.topic, batch.payload))
        self._publishing.add(pending)
        pending.add_done_callback(self._published)
        self.encoder.count(batch)

    def _published(self, done: asyncio.Future[None]) -> None:
        self._publishing.discard(done)
        if not done.cancelled() and (exc := done.exception()) is not None:
            if self._publish_failed is None:
                self._publish_failed = exc
            self._progress.set()

    def _flying(self, stream: str) -> bool:
        return any(f.stream == stream for f in self._in_flight)

    def _resend_if_stalled(self) -> None:
        if not self._in_flight:
            return
        oldest = min(f.sent_at for f in self._in_flight)
        if time.monotonic() - oldest > self.budget.patience_s:
            logger.warning(
                "no acknowledgement for %.0f s; resending from the last ack",
                self.budget.patience_s,
            )
            self._sent = dict(self._acked)
            self._in_flight.clear()
            self.budget.stalled()
