"""The newest records of each stream, as committed, kept in memory beside the database.

An online device uploads each record moments after it is appended: a task's result, a
flagged answer. Reading it back meant a trip to the store's thread and a query for what
the writer thread had in its hands a moment before (about half a millisecond of a task's
path, measured). The writer thread keeps the bodies it committed here, in order, and the
uploader's reads are answered from them when they cover exactly what is asked; anything
else (a backlog after days offline, a resend from the hub's mark) is read from the file.

The writer thread is the only one that changes the database and the only one that
changes this copy, each time in step with the database: records are added once their
transaction committed, and whatever changes records other than by appending them
(renumbering, an expiry) forgets the stream's copy first. The metrics stream is not kept
here: a full one rolls its older records up in place, inside the very append that made
room. Readers still stop at what is on the disk (`through`), as a read of the file does.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterable, Sequence

Row = tuple[int, float, bytes]  # seq, ts, body (msgpack, as appended: never sealed)

MAX_RECORDS = 1000  # per stream: one full upload batch
MAX_BYTES = 256 * 1024  # per stream, bodies only


class Tail:
    """Each stream's newest committed records, contiguous in number."""

    def __init__(self, max_records: int = MAX_RECORDS, max_bytes: int = MAX_BYTES) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._lock = threading.Lock()  # the writer thread adds, the event loop reads
        self._rows: dict[str, collections.deque[Row]] = {}
        self._bytes: dict[str, int] = {}
        self.hits = 0  # reads answered from memory (the uploader's, the courier's)

    def added(self, stream: str, first_seq: int, ts: float, bodies: Sequence[bytes]) -> None:
        """Records numbered from `first_seq` were committed (writer thread)."""
        with self._lock:
            rows = self._rows.get(stream)
            if rows is None or (rows and rows[-1][0] != first_seq - 1):
                # New, or not the next numbers: the copy starts again from these.
                rows = self._rows[stream] = collections.deque()
                self._bytes[stream] = 0
            size = self._bytes[stream]
            for seq, body in enumerate(bodies, start=first_seq):
                rows.append((seq, ts, body))
                size += len(body)
            while rows and (len(rows) > self._max_records or size > self._max_bytes):
                size -= len(rows.popleft()[2])
            self._bytes[stream] = size

    def acknowledged(self, stream: str, hwm: int) -> None:
        """The hub holds `stream` up to `hwm`, and the file no longer does (writer thread)."""
        with self._lock:
            rows = self._rows.get(stream)
            while rows and rows[0][0] <= hwm:
                self._bytes[stream] -= len(rows.popleft()[2])

    def forget(self, streams: Iterable[str]) -> None:
        """Records of `streams` changed other than by an append (writer thread)."""
        with self._lock:
            for stream in streams:
                self._forget(stream)

    def batch(
        self, stream: str, after_seq: int, through_seq: int, max_records: int, max_bytes: int
    ) -> list[Row] | None:
        """The records `streams.read_batch` would return, or None when this copy does not
        hold the next one (`after_seq + 1`): then only the file can say."""
        with self._lock:
            rows = self._rows.get(stream)
            if not rows or not rows[0][0] <= after_seq + 1 <= rows[-1][0]:
                return None
            out: list[Row] = []
            size = 0
            for row in itertools.islice(rows, after_seq + 1 - rows[0][0], None):
                if row[0] > through_seq or len(out) >= max_records:
                    break
                if out and size + len(row[2]) > max_bytes:
                    break
                out.append(row)
                size += len(row[2])
            self.hits += 1
            return out

    def _forget(self, stream: str) -> None:
        self._rows.pop(stream, None)
        self._bytes.pop(stream, None)
