"""The hub's two back-ends, for tests that must hold on both: parametrise a fixture with
`BACKENDS` and open what `database(request, folder)` returns."""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["sqlite", "postgresql"]


def database(request: pytest.FixtureRequest, folder: Path) -> Path | str:
    """A fresh hub database of the fixture's parameter: a SQLite file in `folder`, or a
    new database on the throwaway PostgreSQL server (tests/postgres.py)."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return folder / "hub.db"
