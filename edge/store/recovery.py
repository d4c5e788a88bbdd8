"""Open the agent database; a damaged file is moved aside (never deleted) and replaced."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from edge.store.migrations import MIGRATIONS
from outpost.sqlite import migrate, open_database

logger = logging.getLogger(__name__)


def open_store(path: Path) -> tuple[sqlite_utils.Database, Path | None]:
    """Open (or create) the store; return it and where a damaged predecessor was put."""
    try:
        return _open_checked(path), None
    except sqlite3.DatabaseError as exc:
        aside = _set_aside(path, exc)
        return _open_checked(path), aside


def _open_checked(path: Path) -> sqlite_utils.Database:
    # FULL: a producer is told "stored" only after its commit reached the disk, so a
    # power cut cannot take back what was confirmed. Group commit keeps the cost low.
    db = open_database(path, synchronous="FULL")
    db.conn.row_factory = sqlite3.Row
    try:
        (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        migrate(db, MIGRATIONS)
    except sqlite3.DatabaseError:
        db.conn.close()
        raise
    return db


def _set_aside(path: Path, error: Exception) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    size = path.stat().st_size if path.exists() else 0
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{aside}{suffix}"))
    logger.error(
        "the store %s is damaged (%s): moved it (%d bytes, with any unsent records in it) to "
        "%s and started an empty store; records in it that the hub had not acknowledged "
        "are not sent",
        path,
        error,
        size,
        aside,
    )
    return aside
