"""The agent database's schema, as named migrations applied in order."""

from __future__ import annotations

from outpost.sqlite import Database, Migration


def _m001_streams(db: Database) -> None:
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


def _m002_alignment(db: Database) -> None:
    # A store starts unaligned: its numbering begins at 1, but the hub may hold numbers
    # of an earlier store of this device (one set aside as damaged, say). The first
    # acknowledgements after connecting align it; until then nothing is sent.
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES ('aligned', '')")


def _m003_inbox(db: Database) -> None:
    # Tasks accepted from the hub, until their result is in the results stream.
    db.execute(
        """CREATE TABLE inbox (
            task_id TEXT PRIMARY KEY,
            attempt INTEGER NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            input BLOB NOT NULL,
            dtype TEXT NOT NULL,
            priority INTEGER NOT NULL,
            deadline REAL NOT NULL,
            lease_until REAL NOT NULL,
            state TEXT NOT NULL,
            received_at REAL NOT NULL,
            started_at REAL
        )"""
    )
    db.execute("CREATE INDEX inbox_next ON inbox (state, priority DESC, deadline)")


def _m004_store_id(db: Database) -> None:
    # Who numbered the records: a store made anew (one set aside as damaged) gets a new
    # id, so the hub can tell a courier bundle of this store's numbering from one of a
    # successor whose numbers start again at 1 (edge/courier.py).
    db.execute("INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))")


MIGRATIONS: list[Migration] = [
    ("001_streams", _m001_streams),
    ("002_alignment", _m002_alignment),
    ("003_inbox", _m003_inbox),
    ("004_store_id", _m004_store_id),
]
