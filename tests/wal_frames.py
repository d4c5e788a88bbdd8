"""Damage a SQLite WAL the way a bad sector or a torn write would: one flipped byte in a
frame header, which makes SQLite stop replaying the WAL at that frame.

The layout (https://www.sqlite.org/fileformat.html#the_write_ahead_log): a 32-byte WAL
header (magic, version, page size, checkpoint sequence, two salts, two checksums), then
frames, each a 24-byte header (page number, database size after a commit or 0, the two
salts copied from the WAL header, two checksums) and one page. A frame whose salts
differ from the header's, or whose running checksum does not verify, ends the replay:
it and every frame after it are ignored, so every commit from that frame on is lost,
silently, and `quick_check` still passes on what is left.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

WAL_HEADER = 32
FRAME_HEADER = 24
SALT_1 = 8  # offset of the first salt inside a frame header


def frame_count(wal: Path) -> tuple[int, int]:
    """(number of whole frames, page size) of a WAL file."""
    data = wal.read_bytes()
    (page_size,) = struct.unpack(">I", data[8:12])
    return (len(data) - WAL_HEADER) // (FRAME_HEADER + page_size), page_size


def flip_frame_header(wal: Path, frame: int) -> None:
    """Flip every bit of one byte of `frame`'s first salt, in place."""
    _, page_size = frame_count(wal)
    offset = WAL_HEADER + frame * (FRAME_HEADER + page_size) + SALT_1
    with wal.open("r+b") as f:
        f.seek(offset)
        (byte,) = f.read(1)
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def read_copy(db: Path, frame: int | None, read: Callable[[sqlite3.Connection], T]) -> T:
    """`read` a copy of `db` (and its WAL) with `frame`'s header flipped (None: as it is),
    leaving the original untouched; `read` also gets `quick_check`'s verdict first."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db.name
        shutil.copyfile(db, copy)
        shutil.copyfile(f"{db}-wal", f"{copy}-wal")
        if frame is not None:
            flip_frame_header(Path(f"{copy}-wal"), frame)
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
            assert verdict == "ok", f"flipping frame {frame} damaged pages: {verdict}"
            return read(conn)


def last_results_seq(conn: sqlite3.Connection) -> int:
    """The highest results number a store's database holds (0 if none)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'streams'").fetchone():
        return 0  # its first commits are gone too
    row = conn.execute("SELECT next_seq - 1 FROM streams WHERE stream = 'results'").fetchone()
    return int(row[0]) if row else 0


def frame_losing_results(db: Path, *, keep_at_least: int, below: int) -> int:
    """The first frame whose flipped header leaves the store holding results numbered up to
    some n with `keep_at_least` <= n < `below`: part of the stream survives, the commits
    after it (confirmed ones among them) are lost."""
    frames, _ = frame_count(Path(f"{db}-wal"))
    for frame in range(frames):
        held = read_copy(db, frame, last_results_seq)
        if held >= keep_at_least:
            assert held < below, f"flipping frame {frame} loses no results ({held})"
            return frame
    raise AssertionError(f"no frame of {frames} leaves {keep_at_least} results")
