"""The hub database's schema, as named migrations applied in order."""

from __future__ import annotations

import sqlite_utils

from outpost.sqlite import Migration


def _m001_registry(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE enroll_tokens (
            jti TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            labels TEXT NOT NULL,
            used_at REAL,
            device_id TEXT
        )"""
    )
    db.execute(
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            profile TEXT NOT NULL,
            labels TEXT NOT NULL,
            enrolled_at REAL,
            cert_serial TEXT,
            cert_not_before REAL,
            cert_not_after REAL,
            online INTEGER NOT NULL DEFAULT 0,
            conn TEXT,
            last_seen REAL,
            last_heartbeat REAL,
            heartbeat_interval REAL,
            agent_version TEXT,
            capabilities TEXT,
            load TEXT
        )"""
    )


def _m002_api(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE api_tokens (
            jti TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            role TEXT NOT NULL,
            kind TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked_at REAL
        )"""
    )
    db.execute(
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            subject TEXT NOT NULL,
            role TEXT,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            action TEXT NOT NULL,
            status INTEGER NOT NULL,
            detail TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX devices_profile ON devices (profile)")


MIGRATIONS: list[Migration] = [("001_registry", _m001_registry), ("002_api", _m002_api)]
