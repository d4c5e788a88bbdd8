"""Migrations of the sinks: the outbox, cursors, dead letters."""

from __future__ import annotations

from hub.store.sql import Sql


def m017_outbox(db: Sql) -> None:
    # Events for the sinks (hub/sinks), written in the transaction of the change they
    # describe (outbox.py); each sink's cursor, state and counts; and the events a sink
    # refused for good.
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            type TEXT NOT NULL,
            subject TEXT NOT NULL,
            data TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX outbox_by_time ON outbox (at)")
    db.execute(
        """CREATE TABLE sink_cursors (
            sink TEXT PRIMARY KEY,
            position INTEGER NOT NULL,
            state TEXT NOT NULL,
            error TEXT NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0,
            retried INTEGER NOT NULL DEFAULT 0,
            dead_lettered INTEGER NOT NULL DEFAULT 0,
            overflowed INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE sink_dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            event_id TEXT NOT NULL,
            at REAL NOT NULL,
            type TEXT NOT NULL,
            subject TEXT NOT NULL,
            body TEXT NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX sink_dead_letters_by_sink ON sink_dead_letters (sink, id)")
