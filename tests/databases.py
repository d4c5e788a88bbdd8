"""The hub's two back-ends, for tests that must hold on both: parametrise a fixture with
`BACKENDS` and open what `database(request, folder)` returns, or override conftest's
`hub_backend` in a module with `params=BACKENDS` to run its fixture hubs on each."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hub.store.engine import is_postgres, sqlite_path

BACKENDS = ["sqlite", "postgresql"]


def database(request: pytest.FixtureRequest, folder: Path) -> Path | str:
    """A fresh hub database of the fixture's parameter: a SQLite file in `folder`, or a
    new database on the throwaway PostgreSQL server (tests/postgres.py)."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return folder / "hub.db"


@pytest.fixture(params=BACKENDS)
def hub_backend(request: pytest.FixtureRequest) -> str:
    """Import this into a test module to run its fixture hubs on each back-end (it
    overrides conftest's `hub_backend`, which is SQLite only)."""
    backend: str = request.param
    return backend


def hub_sql(database: Path | str, statement: str, params: Sequence[Any] = ()) -> list[Any]:
    """Run one statement (`?` placeholders) on a hub's database from outside the hub, as
    an operator's tool would, and return its rows (none for a statement without any)."""
    if isinstance(database, str) and is_postgres(database):
        with psycopg.connect(database, autocommit=True) as pg:
            cursor = pg.execute(statement.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []
    with contextlib.closing(sqlite3.connect(sqlite_path(database), timeout=10)) as db, db:
        return db.execute(statement, params).fetchall()
