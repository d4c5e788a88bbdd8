"""The agent database's schema, as named migrations applied in order."""

from __future__ import annotations

import sqlite_utils

from outpost.sqlite import Migration


def _m001_streams(db: sqlite_utils.Database) -> None:
    # WITHOUT ROWID: records are read and deleted in (stream, seq) order only.
    db.execute(
        """CREATE TABLE records (
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            body BLOB NOT NULL,
            rolled INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (stream, seq)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE streams (
            stream TEXT PRIMARY KEY,
            next_seq INTEGER NOT NULL,
            acked_seq INTEGER NOT NULL,
            records INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        )"""
    )
    for stream in ("results", "events", "metrics"):
        db.execute(
            "INSERT INTO streams (stream, next_seq, acked_seq, records, bytes) "
            "VALUES (?, 1, 0, 0, 0)",
            (stream,),
        )
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


MIGRATIONS: list[Migration] = [("001_streams", _m001_streams)]
