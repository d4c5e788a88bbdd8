"""Open the agent database; a damaged file is moved aside (never deleted) and replaced.

Damaged means SQLite cannot open it, its `quick_check` fails, or it holds less of a
stream's numbering than was durably committed (`confirmed`: its WAL lost commits). The
replacement numbers every stream after the last number its predecessor gave, holds an
event saying what was set aside and how many confirmed records may be lost with it (sent
to the hub like any event), and counts them (`lost.<stream>`, `set_aside`).

The swap survives a crash at any point: the successor is built whole under another name
(`store.db.successor`); then the swap is recorded (`store.db.swap`, naming where the old
files go) before the old files are moved aside (its log first) and the successor moved
in. At start, a successor without a recorded swap was never moved in and is discarded;
with one, the swap is finished: whatever of the old files is still in place joins the
rest aside, then the successor moves in. A database is never left beside another's log,
which SQLite would replay into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from edge.store import confirmed, counters, streams
from edge.store.cipher import RecordCipher
from edge.store.migrations import MIGRATIONS
from outpost.sqlite import Database, migrate, open_database

logger = logging.getLogger(__name__)

SUFFIXES = ("", "-wal", "-shm")
# The order files are moved in: the database last, so that a crash part way never leaves
# a database in place without its log, nor (worse) a log in place without its database.
MOVE_ORDER = ("-wal", "-shm", "")
EVENT = "store.set_aside"
_ANY = streams.Bounds(0, 0, 0)


@dataclass(frozen=True)
class Opened:
    """An open store; if its predecessor was set aside, where it went and what was lost."""

    db: Database
    set_aside: Path | None = None
    # Per stream, confirmed numbers the hub was not known to hold when the store was
    # replaced: an upper bound of the records lost (None: no record to count them by).
    lost: dict[str, int] | None = None


class LostCommits(Exception):
    """The database is sound but holds less of a stream's numbering than was committed."""

    def __init__(self, held: confirmed.Marks, short: list[str]) -> None:
        self.held = held
        self.reason = f"it lost confirmed commits, its WAL stopped short: {'; '.join(short)}"
        super().__init__(self.reason)


def open_store(path: Path, cipher: RecordCipher | None = None) -> Opened:
    """Open (or create) the store, replacing a damaged one (see the module's doc)."""
    _finish_swap(path)
    marks = confirmed.read(confirmed.path_for(path))
    if not path.exists():
        if _left_beside(path):  # a log without its database: never replayed into a new one
            return _replace(path, marks, None, "the store file is missing (its log is not)", cipher)
        if marks is None or not any(m.last for m in marks.values()):
            return Opened(_open_checked(path))  # a new device
        return _replace(path, marks, None, "the store file is missing", cipher)
    try:
        _inspect(path, marks)
        return Opened(_open_checked(path, quick_check=False))
    except LostCommits as exc:
        return _replace(path, marks, exc.held, exc.reason, cipher)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        ):
            raise  # another process holds it: not damage (systemd starts the agent again)
        return _replace(path, marks, None, str(exc), cipher)


def _inspect(path: Path, marks: confirmed.Marks | None) -> None:
    """Check the file without writing to it: read-only, so that neither a migration nor
    the checkpoint at close touches the evidence (the WAL beyond a damaged frame)."""
    db = Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True))
    try:
        (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        if marks is None:
            return
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'streams'").fetchone():
            held = confirmed.current(db)
        else:  # its first commits are gone too
            held = {s: confirmed.Mark(0, 0) for s in streams.STREAMS}
        short = [
            f"{s} numbered to {m.last}, held to {held[s].last}"
            for s, m in marks.items()
            if held[s].last < m.last
        ]
        if short:
            raise LostCommits(held, short)
    finally:
        db.conn.close()


def _open_checked(path: Path, *, quick_check: bool = True) -> Database:
    # FULL: a producer is told "stored" only after its commit reached the disk, so a
    # power cut cannot take back what was confirmed. Group commit keeps the cost low.
    db = open_database(path, synchronous="FULL")
    db.conn.row_factory = sqlite3.Row
    try:
        if quick_check:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        migrate(db, MIGRATIONS)
    except sqlite3.DatabaseError:
        db.conn.close()
        raise
    return db


def _replace(
    path: Path,
    marks: confirmed.Marks | None,
    held: confirmed.Marks | None,
    reason: str,
    cipher: RecordCipher | None = None,
) -> Opened:
    """Build a successor, set the old store aside (if there is one), move the successor in."""
    # What the old store numbered, as far as anything tells: the mark, and what the
    # database itself still holds when it can be read.
    known = [m for m in (marks, held) if m is not None]
    last = {s: max((m[s].last for m in known), default=0) for s in streams.STREAMS}
    acked = {s: max((m[s].acked for m in known), default=0) for s in streams.STREAMS}
    lost = {s: last[s] - min(acked[s], last[s]) for s in streams.STREAMS} if marks else None
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    aside = _aside_name(path) if path.exists() or _left_beside(path) else None
    event: dict[str, Any] = {
        "event": EVENT,
        "reason": reason,
        "set_aside": aside.name if aside else None,
        "bytes": size,
        "numbered_to": last,
        "lost": lost,
    }
    successor = _successor(path)
    _build(successor, last, lost, event, cipher)
    _record_swap(path, aside)
    if aside is not None:
        _move(path, aside)
    _move(successor, path)
    _sync_dir(path.parent)
    _swap_record(path).unlink()
    if aside is not None:
        logger.error(
            "the store %s is damaged (%s): moved it (%d bytes, with any unsent records in it) "
            "to %s and started an empty store numbering after it; %s",
            path,
            reason,
            size,
            aside,
            _loss_text(lost),
        )
    else:
        logger.error(
            "the store %s is damaged (%s): started an empty store numbering after it; %s",
            path,
            reason,
            _loss_text(lost),
        )
    return Opened(_open_checked(path), aside, lost)


def _loss_text(lost: dict[str, int] | None) -> str:
    if lost is None:
        return "records in it that the hub had not acknowledged are not sent"
    counts = ", ".join(f"{n} {s}" for s, n in lost.items() if n)
    return (
        f"confirmed records not known to be at the hub are lost: {counts}"
        if counts
        else "the hub had acknowledged every confirmed record"
    )


def _build(
    successor: Path,
    last: dict[str, int],
    lost: dict[str, int] | None,
    event: dict[str, Any],
    cipher: RecordCipher | None,
) -> None:
    """A complete successor, closed (so no WAL of its own) and on disk."""
    for suffix in SUFFIXES:
        Path(f"{successor}{suffix}").unlink(missing_ok=True)
    db = _open_checked(successor)
    try:
        with db.conn:  # the numbering, the counts and the event land together
            db.conn.execute("BEGIN IMMEDIATE")
            streams.seed(db, last)
            for stream, n in (lost or {}).items():
                if n:
                    counters.bump(db, f"lost.{stream}", n)
            counters.bump(db, "set_aside")
            body = msgspec.msgpack.encode(event)
            streams.append(db, "events", [body], _ANY, cipher, time.time())
    finally:
        db.conn.close()


def _finish_swap(path: Path) -> None:
    """Complete or undo a swap that a crash interrupted (see the module's doc)."""
    successor = _successor(path)
    record = _swap_record(path)
    if not successor.exists():
        record.unlink(missing_ok=True)  # the swap was complete
        return
    if not record.exists():  # built, never recorded: nothing was moved; build again
        for suffix in SUFFIXES:
            Path(f"{successor}{suffix}").unlink(missing_ok=True)
        return
    aside_name = record.read_text(encoding="utf-8").strip()
    if aside_name:
        _move(path, path.with_name(aside_name))  # whatever of the old store is still here
    else:
        _move(path, _aside_name(path))  # nothing was to be moved: anything here is stray
    _move(successor, path)
    _sync_dir(path.parent)
    record.unlink()


def _record_swap(path: Path, aside: Path | None) -> None:
    """Record, durably, that a swap begins and where the old files go."""
    record = _swap_record(path)
    with open(record, "w", encoding="utf-8") as out:
        out.write(aside.name if aside is not None else "")
        out.flush()
        os.fsync(out.fileno())
    _sync_dir(path.parent)


def _left_beside(path: Path) -> bool:
    """Whether a log (or its index) of a store is here without the store."""
    return not path.exists() and any(Path(f"{path}{s}").exists() for s in SUFFIXES[1:])


def _swap_record(path: Path) -> Path:
    return path.with_name(f"{path.name}.swap")


def _successor(path: Path) -> Path:
    return path.with_name(f"{path.name}.successor")


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{aside}{s}").exists() for s in SUFFIXES):  # never over earlier evidence
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return aside


def _move(source: Path, target: Path) -> None:
    """Rename a database with its -wal and -shm (its WAL holds its newest commits)."""
    for suffix in MOVE_ORDER:
        moved = Path(f"{source}{suffix}")
        if moved.exists():
            moved.rename(Path(f"{target}{suffix}"))


def _sync_dir(folder: Path) -> None:
    """Make the renames durable (a power cut must not undo the swap's order)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
