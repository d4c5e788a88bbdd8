"""A daemon and a CLI command beside it, or two replicas, may open a fresh database at the
same moment: each migration must be applied once, and neither process may fail."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg

from hub.store.engine import migrate_sqlite, open_engine
from hub.store.migrations import MIGRATIONS, Migration
from hub.store.sql import SqliteSql
from outpost.sqlite import open_database


class AppliedElsewhereFirst(list[Migration]):
    """The migrations, as seen by a process whose look at `_migrations` came just before
    another process applied them all."""

    def __init__(self, other: Path) -> None:
        super().__init__(MIGRATIONS)
        self._other = other

    def __iter__(self) -> Iterator[Migration]:
        migrate_sqlite(SqliteSql(open_database(self._other).conn), MIGRATIONS)
        return super().__iter__()


def test_a_migration_applied_by_another_process_meanwhile_is_not_applied_again(
    tmp_path: Path,
) -> None:
    database = tmp_path / "hub.db"
    mine = SqliteSql(open_database(database).conn)

    applied = migrate_sqlite(mine, AppliedElsewhereFirst(database))

    assert applied == []
    with sqlite3.connect(database) as db:
        names = [r[0] for r in db.execute("SELECT name FROM _migrations")]
    assert names == [name for name, _ in MIGRATIONS]


def test_replicas_migrating_a_new_postgres_database_at_once_apply_each_step_once(
    pg_url: str,
) -> None:
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def replica() -> None:
        barrier.wait()
        try:
            open_engine(pg_url).close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert failures == []
    with psycopg.connect(pg_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]
