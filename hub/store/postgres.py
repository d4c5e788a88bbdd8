"""The store on PostgreSQL: the same SQL modules, run by several hub replicas at once.

Driver: psycopg 3, synchronous, with its connection pool. The SQL modules are plain
functions run on worker threads (as on SQLite), so the blocking driver keeps one code
path for both back-ends; an asyncio driver would have meant writing every unit of work
twice. A pool of a few connections lets one replica's API reads run beside its ingest.

Every unit of work is one SERIALIZABLE transaction, retried whole (after a short jittered
pause) when PostgreSQL reports a serialization failure or a deadlock. So what was correct
under SQLite's single writer (a batch's high-water mark and gap check, a lease's fencing
token, the one policy version counter) stays correct with replicas writing at once: the
server guarantees the outcome of some one-at-a-time order, and no unit needs its own
row locks to get it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool

from hub.dburl import port_problem
from hub.store.sql import Dialect

logger = logging.getLogger(__name__)
# psycopg warns "error ignored terminating <Pipeline>" when a batch (executemany runs in
# pipeline mode) meets a serialization failure: the very conflict this module retries
# and counts. Its errors still show.
logging.getLogger("psycopg").setLevel(logging.ERROR)

T = TypeVar("T")

MAX_ATTEMPTS = 30  # a unit that loses 30 conflicts in a row is reported, not retried forever
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
# Any number: the key of the session-level advisory lock replicas take to migrate.
MIGRATION_LOCK_KEY = 0x6F75_7470_6F73_7401
# A unit takes milliseconds between its statements. A replica frozen inside one (a
# stalled VM, SIGSTOP) keeps its row locks, and PostgreSQL would keep its transaction
# open for ever: every replica's units touching those rows would wait on it, taking
# their pools' threads one by one. Its session is ended once idle this long in a unit,
# which frees the locks; a thawed replica sees that unit fail, and its pool reconnects.
UNIT_STALL_S = 15


class DatabaseUnavailableError(ConnectionError):
    """PostgreSQL could not be reached or refused us; the message is the server's reason."""


class PgRow:
    """A row by position or by column name, as `sqlite3.Row` is."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=False))!r})"


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
    index: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        index.setdefault(column.name, i)  # the first of two same-named columns, as SQLite
    return lambda values: PgRow(values, index)


class _NumberLoader(Loader):
    """`numeric` (what SUM of integers gives) as an int when whole, else a float: the
    values SQLite returns for the same queries, never a `Decimal`."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        try:
            return int(text)
        except ValueError:
            return float(text)


class PostgresSql:
    """`Sql` (see sql.py) over one pooled connection, inside one transaction."""

    dialect: Dialect = "postgresql"
    publishing: bool = False

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(translate(sql), _adapt(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        with self.conn.cursor() as cursor:
            cursor.executemany(translate(sql), [_adapt(r) for r in rows])
            return max(cursor.rowcount, 0)

    def write(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the whole unit is already one such transaction

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def soft(self) -> Iterator[None]:
        self.conn.execute("SET LOCAL synchronous_commit = off")
        yield

    def json_text(self, column: str) -> str:
        return f"({_jsonb(column)} ->> ?)"

    def json_path(self, key: str) -> str:
        return key

    def clock(self) -> str:
        return "EXTRACT(EPOCH FROM clock_timestamp())::float8"

    def json_number(self, column: str, key: str) -> str:
        value = f"({_jsonb(column)} -> '{key}')"
        return f"CASE WHEN jsonb_typeof({value}) = 'number' THEN ({value})::float8 END"


def _jsonb(column: str) -> str:
    """A JSON text column as jsonb, which refuses the escape \\u0000 that a device's text
    (a result's label) may hold: the read failed, and with it the dashboard's snapshot."""
    return f"replace({column}, '\\u0000', '')::jsonb"


def _adapt(params: Sequence[Any]) -> Sequence[Any]:
    # Truth values are integers in the schema (as on SQLite); PostgreSQL will not
    # compare a boolean with a bigint. Its text cannot hold a NUL, which SQLite stores:
    # a device's hello naming its agent "1.0\0" failed the whole presence batch, and a
    # SQLite hub holding one could not be moved (db migrate). It becomes U+FFFD.
    if any(isinstance(p, bool) or (isinstance(p, str) and "\x00" in p) for p in params):
        return [_adapted(p) for p in params]
    return params


def _adapted(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    return value


_DDL = re.compile(r"^\s*(CREATE|ALTER)\s+TABLE\b", re.IGNORECASE)
_TYPES = [
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    # Byte order, as SQLite compares text: keyset pages and sorted listings agree.
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\)\s*WITHOUT ROWID\s*$"), ")"),
]


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """The statement as psycopg takes it: `%s` placeholders (a literal `%` doubled), and
    in table definitions PostgreSQL's names for SQLite's types."""
    if _DDL.match(sql):
        for pattern, replacement in _TYPES:
            sql = pattern.sub(replacement, sql)
    out = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"SET idle_in_transaction_session_timeout = '{UNIT_STALL_S}s'")
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    conn.adapters.register_loader("numeric", _NumberLoader)
    conn.row_factory = _row_factory


def _opened_pool(url: str, size: int, name: str) -> ConnectionPool[psycopg.Connection[Any]]:
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True},
        configure=_configure,
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


class PostgresEngine:
    """Units of work on a pool of connections, each in one retried SERIALIZABLE
    transaction, awaited from asyncio on a matching pool of threads."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4, name: str = "hub") -> None:
        self.url = url
        if problem := port_problem(url):
            raise DatabaseUnavailableError(problem)
        # One connection first, to fail at once with the server's reason (the pool
        # would retry quietly for its whole timeout).
        try:
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(one_line(str(exc)) or repr(exc)) from None
        except psycopg.ProgrammingError:
            # A URL libpq cannot parse: its message quotes the bad part, which may be the
            # password. Said without it (the caller names the database, password left out).
            raise DatabaseUnavailableError(
                "the URL cannot be parsed (check its percent-escapes and [IPv6] hosts)"
            ) from None
        self.retries = 0  # units run again after a conflict, for metrics
        self._retries_lock = threading.Lock()
        self._pool = _opened_pool(url, pool_size, f"{name}-pg")
        # One connection apart, for what must not wait behind units held up on a lock
        # (the leadership lease: its renewal queued behind them, and the lease lapsed).
        self._apart = _opened_pool(url, 1, f"{name}-pg-apart")

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(sql, *args)` in one transaction, again while it loses to a conflict."""
        return self._call(self._pool, fn, *args)

    def call_apart(self, fn: Callable[..., T], *args: Any) -> T:
        """`call`, on the connection apart."""
        return self._call(self._apart, fn, *args)

    def _call(
        self, pool: ConnectionPool[psycopg.Connection[Any]], fn: Callable[..., T], *args: Any
    ) -> T:
        for attempt in range(MAX_ATTEMPTS):
            try:
                with pool.connection() as conn, conn.transaction():
                    return fn(PostgresSql(conn), *args)
            except RETRYABLE:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
                with self._retries_lock:
                    self.retries += 1
            # Apart, at random: two units that collided once should not collide again.
            time.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.25)))  # noqa: S311 - jitter
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection outside any transaction (advisory locks, migrations)."""
        with self._pool.connection() as conn:
            yield conn

    def close(self) -> None:
        self._apart.close()
        self._pool.close()


def one_line(message: str) -> str:
    """libpq's message on one line: its lines ("... failed: Connection refused", then a
    tab and "Is the server running on that host ...?") joined, every run of spaces and
    tabs one space. A line ending in a colon introduces the next ("All failures were:")."""
    lines = [" ".join(line.split()) for line in message.splitlines()]
    joined = ""
    for line in filter(None, lines):
        joined += ("" if not joined else " " if joined.endswith(":") else "; ") + line
    return joined


def advisory_locked(
    conn: psycopg.Connection[Any], key: int
) -> contextlib.AbstractContextManager[None]:
    """Hold PostgreSQL's session advisory lock `key` (waiting for it) for the block."""

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    return held()
