"""A daemon and a CLI command beside it may open a fresh database at the same moment:
each migration must be applied once, and neither process may fail."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from hub.store.migrations import MIGRATIONS
from outpost.sqlite import Migration, migrate, open_database


class AppliedElsewhereFirst(list[Migration]):
    """The migrations, as seen by a process whose look at `_migrations` came just before
    another process applied them all."""

    def __init__(self, other: Path) -> None:
        super().__init__(MIGRATIONS)
        self._other = other

    def __iter__(self) -> Iterator[Migration]:
        migrate(open_database(self._other), MIGRATIONS)
        return super().__iter__()


def test_a_migration_applied_by_another_process_meanwhile_is_not_applied_again(
    tmp_path: Path,
) -> None:
    database = tmp_path / "hub.db"
    mine = open_database(database)

    applied = migrate(mine, AppliedElsewhereFirst(database))

    assert applied == []
    with sqlite3.connect(database) as db:
        names = [r[0] for r in db.execute("SELECT name FROM _migrations")]
    assert names == [name for name, _ in MIGRATIONS]
