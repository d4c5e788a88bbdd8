"""Count the bytes the store writes, for the flash write budget.

The writer thread is the only thread that writes the database, so the growth of its own
`wchar` in /proc/thread-self/io is what SQLite wrote (WAL frames and checkpoints
included). Where that file does not exist, the logical size of the records is counted.
Reading it costs more than a small commit, so it is read at most once a second.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge.store import counters
from outpost.sqlite import Database

_IO = Path("/proc/thread-self/io")


def thread_bytes_written() -> int | None:
    """Bytes this thread has passed to write calls so far, or None if unknown here."""
    try:
        for line in _IO.read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class WriteMeter:
    """The bytes the store's writer thread wrote, read from /proc at most every
    `every_s` (a reading costs more than a small commit): call it from that thread only.

    Where the counter is not available, each commit's logical size stands in for it."""

    def __init__(self, every_s: float = 1.0) -> None:
        self._every_s = every_s
        self._last: int | None = None  # the thread's counter at the last reading
        self._read_at = 0.0
        self._available = True

    def start(self) -> None:
        """Take the first reading (on the writer thread, before its first commit)."""
        self._last = thread_bytes_written()
        self._available = self._last is not None
        self._read_at = time.monotonic()

    def written(self, logical: int, *, now: bool = False) -> int:
        """Bytes written since the last reading; 0 until a reading is due (or `now`)."""
        if not self._available or self._last is None:
            return logical
        moment = time.monotonic()
        if not now and moment - self._read_at < self._every_s:
            return 0
        current = thread_bytes_written()
        if current is None:
            self._available = False
            return logical
        written, self._last, self._read_at = current - self._last, current, moment
        return written


class Unrecorded:
    """The wear the writer thread measured and the store's counters do not hold yet: kept
    until the next transaction records it (a write of its own would cost a sync). Used
    from the writer thread only."""

    def __init__(self) -> None:
        self.meter = WriteMeter()
        self.bytes = 0
        self.records = 0

    def committed(self, logical: int, stored: int) -> None:
        """A commit of `stored` records of `logical` bytes ran."""
        self.bytes += self.meter.written(logical)
        self.records += stored

    def read_now(self) -> None:
        """Count what the writer thread wrote up to now."""
        self.bytes += self.meter.written(0, now=True)

    def record(self, db: Database, *, final: bool = False) -> None:
        """Add it to the counters (inside a caller's transaction) once there are bytes to
        add: the meter reads them at most once a second, and the records counted meanwhile
        wait for them rather than cost every small commit two statements. A kill loses at
        most that second of counts, which the bytes always could. `final`: everything
        counted, bytes or not (the store closes)."""
        if self.bytes or (final and self.records):
            counters.bump(db, "wear.bytes", self.bytes)
            counters.bump(db, "wear.records", self.records)
            self.bytes = self.records = 0
