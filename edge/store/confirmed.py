"""An independent record of how far each stream's numbering durably reached.

SQLite can lose commits without noticing: a damaged frame header in the WAL (a flipped
byte, a torn write) makes it stop replaying the WAL at that frame, silently dropping every
commit after it, and `quick_check` still passes on what is left. A store that lost
commits would then number new records again from where the loss took it back, reusing
numbers the hub may already hold with other content. So beside the database, the store
keeps a small file, `store.db.confirmed`: for each stream the highest sequence number
committed (`last`) and the highest acknowledged by the hub (`acked`), as committed. At
open, a database holding less than the file says for any stream lost confirmed commits,
and is set aside (see `recovery`).

The guarantee, precisely:

- The file is written (one `pwrite` of one small record at offset 0) only after the
  transaction that made its numbers durable has committed: the store runs
  `synchronous=FULL`, so the commit returned only once the WAL was on the disk. The file
  therefore never names a number that the database did not durably hold when it was
  written: a mark ahead of an intact database is impossible, and a database behind the
  mark has lost commits that were durable (and, for appends, confirmed to their
  producers or about to be: the mark is written before the producers are answered).
- It is not fsynced (that would double the cost of every group commit). After a kill of
  the process the kernel still holds the write, so the mark is exact up to the last
  commit whose write ran (a kill between a commit and its write leaves it one commit
  behind). After a power cut it may lag further, or be torn or missing (it carries a
  checksum; a record that does not verify counts as no record). A lagging or missing mark
  under-reports: the check can then miss a loss of the last commits before the cut, but
  never invent one.
- `acked` only sizes the loss reported (numbers above it were not known to be at the
  hub); a lagging `acked` makes that count an over-estimate, never an under-estimate.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from edge.store.streams import STREAMS
from outpost.sqlite import Database

logger = logging.getLogger(__name__)

_MAGIC = b"OSC1"
# Magic, then (last, acked) per stream in `STREAMS` order, then a CRC-32 of what precedes.
_BODY = struct.Struct("<4s" + "QQ" * len(STREAMS))
_CRC = struct.Struct("<I")
SIZE = _BODY.size + _CRC.size  # well inside one disk sector


@dataclass(frozen=True)
class Mark:
    """How far one stream's numbering reached, as committed."""

    last: int  # the highest number given to a record
    acked: int  # the highest number the hub acknowledged


Marks = dict[str, Mark]


def path_for(store: Path) -> Path:
    return store.with_name(f"{store.name}.confirmed")


def current(db: Database) -> Marks:
    """What the database holds now (its committed state, read outside a transaction)."""
    rows = db.execute("SELECT stream, next_seq, acked_seq FROM streams").fetchall()
    return {stream: Mark(next_seq - 1, acked) for stream, next_seq, acked in rows}


def read(path: Path) -> Marks | None:
    """The recorded marks, or None if there is no record or it does not verify."""
    try:
        data = path.read_bytes()[:SIZE]
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("could not read %s (%s): the store's numbering is not checked", path, exc)
        return None
    if len(data) != SIZE:
        return None
    body, (crc,) = data[: _BODY.size], _CRC.unpack(data[_BODY.size :])
    if zlib.crc32(body) != crc:
        logger.warning("%s does not verify (a torn write?): the numbering is not checked", path)
        return None
    magic, *numbers = _BODY.unpack(body)
    if magic != _MAGIC:
        return None
    return {s: Mark(numbers[2 * i], numbers[2 * i + 1]) for i, s in enumerate(STREAMS)}


def encode(marks: Marks) -> bytes:
    numbers: list[int] = []
    for stream in STREAMS:
        mark = marks.get(stream, Mark(0, 0))
        numbers += [mark.last, mark.acked]
    body = _BODY.pack(_MAGIC, *numbers)
    return body + _CRC.pack(zlib.crc32(body))


class MarkFile:
    """The open mark file; written from the store's one writer thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._written = b""
        self._failed = ""

    def write(self, marks: Marks) -> None:
        """Record `marks` (already durable in the database); never fsynced, see above.

        A failure only lets the mark lag (under-reporting, which is safe): the commit it
        follows is durable already, so it is logged once and the store goes on."""
        data = encode(marks)
        if data == self._written:
            return  # an ack that moved nothing, say: no system call
        try:
            os.pwrite(self._fd, data, 0)
        except OSError as exc:
            if str(exc) != self._failed:
                logger.warning("could not record the store's numbering in %s: %s", self.path, exc)
                self._failed = str(exc)
            return
        self._written = data
        self._failed = ""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
