"""SQLite under asyncio: WAL, named migrations, and one writer thread per database.

Every statement runs on a single dedicated thread (after Datasette's design): SQLite
allows one writer at a time anyway, so one thread serialises writes without locks and
keeps blocking I/O off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
D = TypeVar("D")


class Database:
    """A connection as the stores use it: statements through `execute`, transactions on
    `conn` (`with db.conn:`, `BEGIN IMMEDIATE`).

    The connection is in autocommit mode (`isolation_level=None`): a statement outside
    an explicit transaction commits on its own. This was sqlite-utils' `Database`, of
    which nothing else was used; importing it brought click, dateutil, pluggy, ctypes
    and csv along, 4.1 MiB resident and 66 modules on a device beside the agent's other
    libraries.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(
        self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
    ) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    def close(self) -> None:
        self.conn.close()


Migration = tuple[str, Callable[[Database], None]]


class StoreClosedError(RuntimeError):
    """The store was used after it was closed."""


def open_database(
    path: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000
) -> Database:
    """Open `path` in WAL mode with the given `synchronous` level.

    `check_same_thread=False` because the connection is made on the caller's thread but
    used only from the store's one worker thread afterwards. A write that finds the
    database locked waits up to `busy_timeout_ms`, then fails ("database is locked").
    """
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return Database(conn)


def migrate(db: Database, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction, in order."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, step in migrations:
        if name in done:
            continue
        with db.conn:  # one transaction: the step and its record land together
            db.conn.execute("BEGIN IMMEDIATE")
            # Another process (a CLI command beside the daemon) may have applied it
            # between our read and our lock: look again, under the lock.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                continue
            step(db)
            db.conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
            )
        logger.debug("applied migration %s", name)
        applied.append(name)
    return applied


@contextlib.contextmanager
def soft_state(db: Database) -> Iterator[None]:
    """Commit the enclosed writes without waiting for the disk (`synchronous=NORMAL`).

    For state that the next message rewrites anyway (heartbeats, presence): in WAL mode
    a power cut can lose only the last such commits, never corrupt the file, and the
    next durable commit syncs them along with its own.
    """
    (previous,) = db.execute("PRAGMA synchronous").fetchone()
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        db.execute(f"PRAGMA synchronous={int(previous)}")


class SerialDatabase(Generic[D]):
    """A database whose every call runs on one worker thread, awaited from asyncio.

    `db` is what each call is handed (a `Database`, or the hub's `Sql`);
    `close` closes its connection, on the worker thread."""

    def __init__(self, db: D, name: str, *, close: Callable[[], None]) -> None:
        self._db = db
        self._close = close
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-db")
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(db, *args)` on the worker thread and return its result."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._db, *args)

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue `fn(db, *args)` on the worker thread without waiting for it; it reports
        its own outcome (and must not raise: nobody would see it)."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        self._executor.submit(fn, self._db, *args)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(db, *args)` on the worker thread, blocking (for CLIs, not the loop)."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        return self._executor.submit(fn, self._db, *args).result()

    def close(self) -> None:
        """Finish queued work and close the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close).result()
        self._executor.shutdown(wait=True)
