"""`db migrate` of an older hub's database: brought to the newest schema in a copy in the
temp folder (TMPDIR), so a temp folder without room is refused in words, before or
during the copy, and no part of the copy is left there."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from hub.store import transfer
from hub.store.engine import migrate_sqlite
from hub.store.migrations import MIGRATIONS
from hub.store.sql import SqliteSql
from hub.store.transfer import TransferRefusedError
from outpost.sqlite import open_database


class Usage(NamedTuple):  # what shutil.disk_usage answers
    total: int
    used: int
    free: int


@pytest.fixture
def older(tmp_path: Path) -> Path:
    """An older hub's database: one migration behind."""
    path = tmp_path / "old" / "hub.db"
    path.parent.mkdir()
    db = open_database(path, synchronous="FULL")
    try:
        migrate_sqlite(SqliteSql(db.conn), MIGRATIONS[:-1])
    finally:
        db.conn.close()
    return path


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp folder the copy is made in, as TMPDIR would choose it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_temp_folder_without_room_is_refused_before_the_copy(
    older: Path, temp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []

    def full(path: Any) -> Usage:
        asked.append(Path(path))
        return Usage(total=10 << 30, used=10 << 30, free=4096)

    monkeypatch.setattr(shutil, "disk_usage", full)

    with (
        pytest.raises(TransferRefusedError, match=r"needs about [0-9.]+ MB free in ") as refused,
        transfer._hub_database(older),
    ):
        pytest.fail("the copy was made")

    said = str(refused.value)
    assert asked == [temp]
    assert f"in {temp}, which has 0.0 MB" in said
    assert "TMPDIR" in said
    assert list(temp.iterdir()) == []


def test_a_copy_that_fails_in_the_temp_folder_is_refused_naming_it(
    older: Path, temp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is made, then its migration meets a full disk: sqlite3's error becomes
    the refusal the CLI prints, and the copy made so far is removed."""
    made = []

    def full_disk(path: Path) -> None:
        made.append(path)
        assert path.exists()
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(transfer, "open_engine", full_disk)

    with pytest.raises(TransferRefusedError) as refused, transfer._hub_database(older):
        pytest.fail("the copy was made")

    said = str(refused.value)
    assert f"temporary copy in {temp}, and that copy failed: database or disk is full" in said
    assert "set TMPDIR to a folder with room" in said
    assert made
    assert made[0].is_relative_to(temp)
    assert list(temp.iterdir()) == []
