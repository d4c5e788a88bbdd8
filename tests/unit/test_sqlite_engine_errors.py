"""Why the hub's SQLite file cannot be used, said as it is: a folder it may not write
(read-only, another user's, missing) was reported as "not a usable SQLite database",
which invites a needless restore from backup."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.dburl import DatabaseUrlError
from hub.store.engine import SqliteEngine


def test_a_file_it_cannot_open_is_not_called_damaged(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUrlError) as refused:
        SqliteEngine(tmp_path / "missing" / "hub.db")
    assert "to write it (unable to open database file)" in str(refused.value)
    assert "not a usable" not in str(refused.value)


def test_a_damaged_file_is_called_damaged(tmp_path: Path) -> None:
    damaged = tmp_path / "hub.db"
    damaged.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(DatabaseUrlError) as refused:
        SqliteEngine(damaged)
    assert f"{damaged} is not a usable SQLite database" in str(refused.value)
    assert damaged.read_bytes() == b"this is not a database, just text " * 100
