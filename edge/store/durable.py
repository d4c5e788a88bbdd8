"""How far each stream is on the disk, and the sync that takes unsynced commits there.

Commits answered once `written` (see `Confirm` in the store) are not synced by SQLite.
This thread syncs the WAL after them, off the store's writer thread so the next commit
does not wait behind it; one sync covers every commit written before it, so it waits
`SYNC_DELAY_S` for more to gather first (a sync per commit costs the whole device: the
commits that meet a running sync wait for it, and the journal's work takes CPU). Only then is
the new numbering recorded: in the confirmed mark (which must never name a number the
disk may not hold) and in `limit`, which the uploader's reads respect, so no record
leaves the device before it is on the device's disk. A synced commit (SQLite's own
sync) settles everything before it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from edge.store.confirmed import MarkFile, Marks

logger = logging.getLogger(__name__)

# How long a sync waits for more unsynced commits to cover: the longest a recorded answer
# is exposed to a power cut, beyond the sync itself.
SYNC_DELAY_S = 0.01
# The same for a commit whose loss a power cut makes harmless (an acknowledgement: the
# records come again and the hub takes them as duplicates). Usually the next synced
# commit takes it to the disk first: a task's result, say. At 10 ms its sync came in the
# middle of the next task's synced commit on an online device, 4 tasks in 10 (measured).
LAZY_SYNC_S = 1.0
SYNC_RETRY_S = 1.0  # after a failed sync, the next try


def sync_file(path: str) -> None:
    """fsync the file at `path` (a descriptor of a file syncs all its written pages)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Durability:
    """The marks and read limits of what is on the disk, and the thread that syncs."""

    def __init__(
        self,
        wal: str,
        marks: MarkFile,
        numbering: Marks,
        on_synced: Callable[[], None],
        delay_s: float = SYNC_DELAY_S,
    ) -> None:
        self._wal = wal
        self._delay_s = delay_s
        self._marks = marks
        self._on_synced = on_synced
        self._lock = threading.Condition()
        self._settled = 0  # the generation of the numbering last recorded
        self._limit = {stream: mark.last for stream, mark in numbering.items()}
        self._pending: tuple[int, Marks] | None = None
        self._due = 0.0  # when the pending commits must be synced (time.monotonic())
        self._failing = False  # the last sync failed (logged once until one succeeds)
        self._closing = False
        self._thread: threading.Thread | None = None
        # Futures of callers waiting for a generation to be on the disk, with their loops.
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        marks.write(numbering)

    def limit(self, stream: str) -> int:
        """The highest number of `stream` known to be on the disk."""
        with self._lock:
            return self._limit.get(stream, 0)

    def when_settled(self, generation: int) -> asyncio.Future[None]:
        """A future (of the running loop) done once the commit that left `generation` is
        on the disk: at once if it is, else at the sync that takes it there (this
        thread's, or a later synced commit's, which takes every commit before it)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if generation <= self._settled:
                done.set_result(None)
            else:
                self._waiters.append((generation, loop, done))
        return done

    def synced(self, generation: int, numbering: Marks) -> None:
        """A commit that SQLite synced left `numbering` (from the writer thread)."""
        self._settle(generation, numbering)

    def unsynced(self, generation: int, numbering: Marks, within_s: float | None = None) -> None:
        """A commit that nobody synced yet left `numbering`: sync it within `within_s`
        (the thread's delay unless given), unless a synced commit takes it first."""
        due = time.monotonic() + (self._delay_s if within_s is None else within_s)
        with self._lock:
            idle = self._pending is None
            sooner = idle or due < self._due
            if sooner:
                self._due = due
            self._pending = (generation, numbering)  # a later one covers an earlier one
            started = self._thread is not None or self._start_thread()
            # Woken only when it waits for work or must sync sooner: while it gathers
            # commits a wake-up would only take the GIL to wait again.
            if sooner:
                self._lock.notify_all()
        if not started:
            # No thread to sync them (too many threads, say): synced here, now, rather
            # than left waiting for one. The next unsynced commit tries the thread again.
            self._sync_pending()

    def _start_thread(self) -> bool:
        """Start the sync thread (lock held); False if it could not be started."""
        thread = threading.Thread(target=self._run, name="agent-store-sync", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a process out of threads
            logger.error("could not start the store's sync thread (%s): syncing inline", exc)
            return False
        self._thread = thread  # only a started thread: `close` joins it
        return True

    def close(self) -> None:
        """Sync what is pending, then stop the thread."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        else:  # no thread ever started: what an inline sync left is synced now
            self._sync_pending()

    def _settle(self, generation: int, numbering: Marks) -> None:
        with self._lock:
            if generation <= self._settled:
                return  # an older numbering (a sync that finished after a newer commit)
            self._settled = generation
            self._marks.write(numbering)
            for stream, mark in numbering.items():
                self._limit[stream] = max(self._limit.get(stream, 0), mark.last)
            waiting = []
            for waiter in self._waiters:
                if waiter[0] <= generation:
                    with contextlib.suppress(RuntimeError):  # its loop closed: no one waits
                        waiter[1].call_soon_threadsafe(_resolve, waiter[2])
                else:
                    waiting.append(waiter)
            self._waiters = waiting

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closing:
                    self._lock.wait()
                if self._pending is None:
                    return
                # Let more commits gather until the first is due (closing cuts it short;
                # they are all pending). A sooner one moves `_due` and wakes this wait.
                while not self._closing and (left := self._due - time.monotonic()) > 0:
                    self._lock.wait(left)
            self._sync_pending()

    def _sync_pending(self) -> None:
        """Sync the WAL for the pending commits, if any, and settle them."""
        with self._lock:
            if self._pending is None:
                return
            (generation, numbering), self._pending = self._pending, None
            if generation <= self._settled:
                return  # a synced commit took it to the disk meanwhile
        try:
            sync_file(self._wal)
        except OSError as exc:
            # Not settled: tried again in a while, whether or not more commits come
            # (an idle device's waiters, a task's "accepted", would wait for ever).
            if not self._failing:
                logger.error("could not sync the store's log %s: %s", self._wal, exc)
            self._failing = True
            with self._lock:
                # A later pending commit covers this one, and comes with its own due
                # time; closing, there is no later try (the close would never end).
                if self._pending is None and not self._closing:
                    self._pending = (generation, numbering)
                    self._due = time.monotonic() + SYNC_RETRY_S
            return
        if self._failing:
            logger.warning("the store's log %s syncs again", self._wal)
            self._failing = False
        self._settle(generation, numbering)
        self._on_synced()


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():  # its waiter may have been cancelled
        done.set_result(None)
