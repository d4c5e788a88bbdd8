"""Which database the hub keeps its truth in, chosen by a URL, and how units of work reach it.

- a path, or `sqlite:PATH`: one SQLite file, the embedded default (one process, one
  writer thread; nothing to install);
- `postgresql://...` (or `postgres://`): a PostgreSQL database that several hub replicas
  share (see postgres.py).

Both apply the same list of migrations (hub/store/migrations) when opened; on PostgreSQL under
an advisory lock, so replicas starting together against a new database do not race.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hub.dburl import DatabaseUrlError as DatabaseUrlError  # re-exported for the store's callers
from hub.dburl import describe as describe
from hub.dburl import is_postgres as is_postgres
from hub.dburl import sqlite_path as sqlite_path
from hub.store.migrations import MIGRATIONS, Migration
from hub.store.sql import Dialect, Sql, SqliteSql
from outpost.sqlite import SerialDatabase, StoreClosedError, open_database

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Engine(Protocol):
    dialect: Dialect

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(sql, *args)` as one unit of work, off the event loop."""
        ...

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """The same, blocking (for CLIs and threads, not the event loop)."""
        ...

    async def run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        """`run`, on a connection and thread of its own that no other unit takes: for
        what must not queue behind units waiting on a lock (the leadership lease)."""
        ...

    def close(self) -> None: ...


def open_engine(url: str | Path, *, busy_timeout_ms: int = 5000, pool_size: int = 4) -> Engine:
    """Open (and migrate) the database `url` names."""
    if isinstance(url, str) and is_postgres(url):
        try:
            from hub.store.postgres import DatabaseUnavailableError, PostgresEngine
        except ImportError as exc:  # the driver is an extra: the agent's install lacks it
            raise DatabaseUrlError(
                f"a PostgreSQL database needs the hub's postgres extra ({exc.name} is missing):"
                " pip install 'outpost[postgres]'"
            ) from None

        try:
            engine = PostgresEngine(url, pool_size=pool_size)
        except DatabaseUnavailableError as exc:
            raise DatabaseUrlError(f"cannot use the database {describe(url)}: {exc}") from None
        try:
            migrate_postgres(engine, MIGRATIONS)
        except BaseException:
            engine.close()
            raise
        return AsyncPostgres(engine, pool_size)
    return SqliteEngine(sqlite_path(url), busy_timeout_ms=busy_timeout_ms)


def database_failed(exc: BaseException) -> bool:
    """Whether `exc` is the database's own failure (down, locked, full, read-only), which
    every unit of work meets alike, rather than one that the values of a statement
    caused (a number out of range, a character a back-end cannot hold)."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = sys.modules.get("psycopg")  # imported only by a PostgreSQL engine
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def retries(engine: Engine) -> int:
    """Count the units of work `engine` ran again because a concurrent one won."""
    # Only PostgreSQL's engine keeps the count: SQLite's single writer has no conflicts.
    inner = getattr(engine, "engine", None)
    return int(getattr(inner, "retries", 0))


# What SQLite says when it may not open or write the file: the folder or the disk, not
# the database (a read-only data folder was reported as "not a usable database", which
# invites a needless restore from backup).
_CANNOT_WRITE = ("unable to open database file", "attempt to write a readonly database")


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> DatabaseUrlError:
    if isinstance(exc, sqlite3.OperationalError) and str(exc) in _CANNOT_WRITE:
        return DatabaseUrlError(
            f"cannot open {path} to write it ({exc}): its folder must exist and be writable "
            "by this user, on a disk mounted read-write; the database itself was not read"
        )
    return DatabaseUrlError(f"{path} is not a usable SQLite database: {exc}")


class SqliteEngine:
    """The embedded default: every unit of work on one thread, one file."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        # FULL: what the hub confirms (a used token, a new device, an acked record) must
        # survive a power cut. Soft state (presence) opts out per write, see `Sql.soft`.
        try:
            db = open_database(path, synchronous="FULL", busy_timeout_ms=busy_timeout_ms)
        except sqlite3.DatabaseError as exc:  # a damaged file, or another kind of file
            raise _unusable(path, exc) from exc
        sql = SqliteSql(db.conn)
        try:
            migrate_sqlite(sql, MIGRATIONS)
        except sqlite3.DatabaseError as exc:  # it may only show at the first read
            db.conn.close()
            raise _unusable(path, exc) from exc
        self._serial = SerialDatabase(sql, "hub", close=db.conn.close)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._serial.run(fn, *args)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._serial.run_sync(fn, *args)

    async def run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._serial.run(fn, *args)  # one replica, one thread: nothing to wait on

    def close(self) -> None:
        self._serial.close()


class AsyncPostgres:
    """A `PostgresEngine` awaited from asyncio, on as many threads as it has connections."""

    dialect: Dialect = "postgresql"

    def __init__(self, engine: Any, threads: int) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hub-pg")
        self._apart = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-pg-apart")
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._executor, self.engine.call, fn, *args)
        return result

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosedError("the store is closed")
        result: T = self._executor.submit(self.engine.call, fn, *args).result()
        return result

    async def run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._apart, self.engine.call_apart, fn, *args)
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._apart.shutdown(wait=True)
        self.engine.close()


class FencedEngine:
    """An engine whose units of work begin with a check that may refuse them."""

    def __init__(self, engine: Engine, fence: Callable[[Sql], None]) -> None:
        self.dialect = engine.dialect
        self._engine = engine
        self._fence = fence

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._engine.run(_after_fence, self._fence, fn, *args)
        return result

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = self._engine.run_sync(_after_fence, self._fence, fn, *args)
        return result

    async def run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._engine.run_apart(_after_fence, self._fence, fn, *args)
        return result

    def close(self) -> None:
        raise RuntimeError("close the store itself, not a fenced view of it")


class PublishingEngine:
    """An engine whose units of work write events for the sinks (`Sql.publishing`, see
    outbox.py): a hub with sinks configured runs on one."""

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect
        self.engine = getattr(engine, "engine", None)  # what `retries` reads
        self._engine = engine

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._engine.run(_publishing, fn, *args)
        return result

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = self._engine.run_sync(_publishing, fn, *args)
        return result

    async def run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._engine.run_apart(_publishing, fn, *args)
        return result

    def close(self) -> None:
        self._engine.close()


def _publishing(db: Sql, fn: Callable[..., T], *args: Any) -> T:
    db.publishing = True
    try:
        result: T = fn(db, *args)
        return result
    finally:
        db.publishing = False


def _after_fence(db: Sql, fence: Callable[[Sql], None], fn: Callable[..., T], *args: Any) -> T:
    fence(db)
    result: T = fn(db, *args)
    return result


_LEDGER = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"


def migrate_sqlite(sql: SqliteSql, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction, in order."""
    sql.execute(_LEDGER)
    done = {row[0] for row in sql.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, step in migrations:
        if name in done:
            continue
        with sql.write():  # one transaction: the step and its record land together
            # Another process (a CLI command beside the daemon) may have applied it
            # between our read and our lock: look again, under the lock.
            if sql.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                continue
            step(sql)
            _record(sql, name)
        # Debug: every CLI command opens the store, and a fresh data folder would greet
        # its first one with a line per migration.
        logger.debug("applied migration %s", name)
        applied.append(name)
    return applied


def migrate_postgres(engine: Any, migrations: Sequence[Migration]) -> list[str]:
    """Apply the missing migrations in one transaction, holding an advisory lock: a
    replica that starts while another migrates waits, then finds nothing left to do."""
    import psycopg

    from hub.store.postgres import MIGRATION_LOCK_KEY, PostgresSql, advisory_locked

    with engine.session() as conn, advisory_locked(conn, MIGRATION_LOCK_KEY):
        # READ COMMITTED: the snapshot must be taken after the lock is ours, or the
        # migrations another replica committed while we waited would be invisible.
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        try:
            with conn.transaction():
                sql = PostgresSql(conn)
                sql.execute(_LEDGER)
                done = {row[0] for row in sql.execute("SELECT name FROM _migrations")}
                applied = []
                for name, step in migrations:
                    if name not in done:
                        step(sql)
                        _record(sql, name)
                        applied.append(name)
        finally:
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    for name in applied:
        logger.debug("applied migration %s", name)  # debug: see migrate_sqlite
    return applied


def _record(sql: Sql, name: str) -> None:
    sql.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))


def applied_migrations(engine: Engine) -> list[str]:
    return engine.run_sync(
        lambda sql: [r[0] for r in sql.execute("SELECT name FROM _migrations ORDER BY name")]
    )
