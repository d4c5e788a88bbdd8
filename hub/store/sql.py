"""What the store's SQL modules talk to: one connection, in one unit of work, of either
back-end.

The SQL modules (devices, records, leases, ...) are written once, in the dialect both
SQLite and PostgreSQL accept: `?` placeholders, `INSERT ... ON CONFLICT`, `RETURNING`,
integers for truth values. What differs is how a unit of work is made safe:

- on SQLite one thread runs every unit and `write()` takes the file's write lock
  (`BEGIN IMMEDIATE`), so units never interleave;
- on PostgreSQL several replicas run units at once, each in one SERIALIZABLE
  transaction that is retried whole when the server reports a conflict
  (`hub/store/postgres.py`), so they behave as if run one after another too, and
  `write()` has nothing left to do.

A unit of work may therefore be run more than once: it must not act outside the
database (no publishing, no logging of outcomes) before it returns.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol, TypeVar

Dialect = Literal["sqlite", "postgresql"]
T = TypeVar("T")

# Values bound in one `IN (...)` read: well under every back-end's parameter limit.
BIND_CHUNK = 500


def storable_text(value: str) -> bool:
    """Whether a text from a device can be bound as it is: PostgreSQL's text holds no NUL
    character (SQLite's does, so one back-end would take what the other fails on)."""
    return "\x00" not in value


def without_nul(value: str) -> str:
    """A free text from a device (an error, a reason), its NUL characters replaced."""
    return value.replace("\x00", "\ufffd")


def chunked(items: Sequence[T], size: int = BIND_CHUNK) -> Iterator[Sequence[T]]:
    """`items` in slices of `size`, for reads that bind a list of keys."""
    for first in range(0, len(items), size):
        yield items[first : first + size]


def marks(count: int) -> str:
    """`count` placeholders for an `IN (...)` list."""
    return ", ".join("?" * count)


class Row(Protocol):
    """A result row, by position or by column name."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Sql(Protocol):
    """One connection inside one unit of work."""

    dialect: Dialect
    # Whether this unit of work writes events for the sinks (outbox.py): on only in a hub
    # with sinks configured, so a hub without them writes nothing more.
    publishing: bool

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run `sql` once per row; return the rows changed in all."""
        ...

    def write(self) -> contextlib.AbstractContextManager[None]:
        """A transaction that writes: no other writer runs between its reads and its
        writes, and it commits (durably) or rolls back as a whole."""
        ...

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Reads that all see the database as of one moment."""
        ...

    def soft(self) -> contextlib.AbstractContextManager[None]:
        """Commits inside may return before they reach the disk: for state the next
        message rewrites anyway (presence). A crash can lose them, never corrupt."""
        ...

    def json_text(self, column: str) -> str:
        """An SQL expression: the text at a JSON path (bound as the next parameter, made
        by `json_path`) inside the JSON text `column`."""
        ...

    def json_path(self, key: str) -> str:
        """The parameter `json_text` binds for a top-level `key`."""
        ...

    def clock(self) -> str:
        """An SQL expression: the database's clock, in seconds since the epoch (one
        clock for every replica)."""
        ...

    def json_number(self, column: str, key: str) -> str:
        """An SQL expression: the number at the top-level `key` (a name written in the
        code, never input) of the JSON text `column`, NULL when it is not a number."""
        ...


class SqliteSql:
    """`Sql` over one SQLite connection, used from one thread only."""

    dialect: Dialect = "sqlite"
    publishing: bool = False

    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self.conn:  # commits on success, rolls back on an exception
            self.conn.execute("BEGIN IMMEDIATE")
            yield

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.conn:
            self.conn.execute("BEGIN")
            yield

    @contextlib.contextmanager
    def soft(self) -> Iterator[None]:
        # In WAL mode a power cut can lose only the last such commits; the next durable
        # commit syncs them along with its own.
        (previous,) = self.conn.execute("PRAGMA synchronous").fetchone()
        self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA synchronous={int(previous)}")

    def json_text(self, column: str) -> str:
        return f"json_extract({column}, ?)"

    def clock(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def json_number(self, column: str, key: str) -> str:
        # json_extract gives SQLite's own value: a number stays one, the caller checks.
        return f"json_extract({column}, '$.{key}')"

    def json_path(self, key: str) -> str:
        # Quoted, so a key with a dot or a bracket is one key, not a path.
        return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
