"""The hub's persistence: the one module that speaks SQL (SQLite now, PostgreSQL later).

The database, not memory, is the truth: every handler goes through these methods, and
each method is a whole unit of work, so several hub replicas could share one database.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from outpost.sqlite import Migration, SerialDatabase, migrate, open_database, soft_state


class TokenRefusedError(ValueError):
    """A bootstrap token is unknown, already used or expired."""


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


MIGRATIONS: list[Migration] = [("001_registry", _m001_registry)]


@dataclass(frozen=True)
class Device:
    """A device as the registry knows it."""

    device_id: str
    profile: str
    labels: dict[str, str]
    online: bool
    last_seen: float | None
    last_heartbeat: float | None
    heartbeat_interval: float | None
    agent_version: str | None
    capabilities: dict[str, Any]
    load: dict[str, Any]
    enrolled_at: float | None
    cert_serial: str | None
    cert_not_before: float | None
    cert_not_after: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Device:
        return cls(
            device_id=row["device_id"],
            profile=row["profile"],
            labels=json.loads(row["labels"]),
            online=bool(row["online"]),
            last_seen=row["last_seen"],
            last_heartbeat=row["last_heartbeat"],
            heartbeat_interval=row["heartbeat_interval"],
            agent_version=row["agent_version"],
            capabilities=json.loads(row["capabilities"] or "{}"),
            load=json.loads(row["load"] or "{}"),
            enrolled_at=row["enrolled_at"],
            cert_serial=row["cert_serial"],
            cert_not_before=row["cert_not_before"],
            cert_not_after=row["cert_not_after"],
        )


@dataclass(frozen=True)
class HelloSeen:
    """A device connected and said who it is."""

    device_id: str
    conn: str
    now: float
    profile: str
    agent_version: str
    heartbeat_interval: float
    capabilities: dict[str, Any]


@dataclass(frozen=True)
class HeartbeatSeen:
    """A device is alive and this busy."""

    device_id: str
    conn: str
    now: float
    heartbeat_interval: float
    load: dict[str, Any]


@dataclass(frozen=True)
class ConnectionLost:
    """A device's connection `conn` ended (its last will, or its goodbye)."""

    device_id: str
    conn: str
    now: float


PresenceEvent = HelloSeen | HeartbeatSeen | ConnectionLost


class HubStore:
    """Registry of devices and bootstrap tokens, awaited from the event loop."""

    def __init__(self, path: Path) -> None:
        db = open_database(path, synchronous="FULL")  # the hub acknowledges what it stores
        db.conn.row_factory = sqlite3.Row
        migrate(db, MIGRATIONS)
        self._db = SerialDatabase(db, "hub")

    def close(self) -> None:
        self._db.close()

    # -------------------------------------------------------------- enrollment tokens

    async def add_enroll_token(
        self, jti: str, *, now: float, expires_at: float, labels: dict[str, str]
    ) -> None:
        await self._db.run(_add_enroll_token, jti, now, expires_at, labels)

    def add_enroll_token_sync(
        self, jti: str, *, now: float, expires_at: float, labels: dict[str, str]
    ) -> None:
        self._db.run_sync(_add_enroll_token, jti, now, expires_at, labels)

    async def consume_enroll_token(self, jti: str, *, now: float) -> dict[str, str]:
        """Mark the token used and return its labels, or raise `TokenRefusedError`."""
        return await self._db.run(_consume_enroll_token, jti, now)

    async def bind_enroll_token(self, jti: str, device_id: str) -> None:
        await self._db.run(
            lambda db: db.execute(
                "UPDATE enroll_tokens SET device_id = ? WHERE jti = ?", (device_id, jti)
            )
        )

    # -------------------------------------------------------------- devices

    async def add_device(self, device: Device) -> None:
        await self._db.run(_add_device, device)

    async def record_presence(self, events: Sequence[PresenceEvent]) -> list[bool]:
        """Apply presence events in order, in one transaction (one thread hop for a whole
        batch); return, for each, whether it changed the device's online state."""
        return await self._db.run(_record_presence, list(events))

    async def expire_silent(self, *, now: float, intervals: float) -> list[str]:
        """Mark offline every online device silent for `intervals` heartbeat intervals."""
        return await self._db.run(_expire_silent, now, intervals)

    async def devices(self) -> list[Device]:
        return await self._db.run(_devices)

    def devices_sync(self) -> list[Device]:
        return self._db.run_sync(_devices)

    async def device(self, device_id: str) -> Device | None:
        return await self._db.run(_device, device_id)


# Each function below runs on the store's worker thread, one transaction each.


def _add_enroll_token(
    db: sqlite_utils.Database, jti: str, now: float, expires_at: float, labels: dict[str, str]
) -> None:
    db.execute(
        "INSERT INTO enroll_tokens (jti, created_at, expires_at, labels) VALUES (?, ?, ?, ?)",
        (jti, now, expires_at, json.dumps(labels, sort_keys=True)),
    )


def _consume_enroll_token(db: sqlite_utils.Database, jti: str, now: float) -> dict[str, str]:
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "SELECT expires_at, labels, used_at FROM enroll_tokens WHERE jti = ?", (jti,)
        ).fetchone()
        if row is None:
            raise TokenRefusedError("unknown token (not issued by this hub)")
        if row["used_at"] is not None:
            raise TokenRefusedError("token already used")
        if row["expires_at"] <= now:
            raise TokenRefusedError("token expired")
        db.execute("UPDATE enroll_tokens SET used_at = ? WHERE jti = ?", (now, jti))
    labels: dict[str, str] = json.loads(row["labels"])
    return labels


def _add_device(db: sqlite_utils.Database, d: Device) -> None:
    db.execute(
        """INSERT INTO devices (device_id, profile, labels, enrolled_at, cert_serial,
               cert_not_before, cert_not_after, online)
           VALUES (?, ?, ?, ?, ?, ?, ?, 0)""",
        (
            d.device_id,
            d.profile,
            json.dumps(d.labels, sort_keys=True),
            d.enrolled_at,
            d.cert_serial,
            d.cert_not_before,
            d.cert_not_after,
        ),
    )


def _record_presence(db: sqlite_utils.Database, events: list[PresenceEvent]) -> list[bool]:
    changed = []
    with soft_state(db), db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        for event in events:
            row = db.execute(
                "SELECT online, conn FROM devices WHERE device_id = ?", (event.device_id,)
            ).fetchone()
            was_online = bool(row and row["online"])
            match event:
                case HelloSeen():
                    _apply_hello(db, event)
                    changed.append(not was_online)
                case HeartbeatSeen():
                    _apply_heartbeat(db, event)
                    changed.append(row is not None and not was_online)
                case ConnectionLost():
                    # Only the current connection's will counts: the will of an older
                    # connection can arrive after the device has already reconnected.
                    lost = was_online and row["conn"] == event.conn
                    if lost:
                        db.execute(
                            "UPDATE devices SET online = 0 WHERE device_id = ?",
                            (event.device_id,),
                        )
                    changed.append(lost)
    return changed


def _apply_hello(db: sqlite_utils.Database, e: HelloSeen) -> None:
    # A device we did not enroll (say the database was restored from an older backup)
    # still holds a certificate of our CA, or the broker would not have let it in:
    # register it with empty labels rather than ignore it.
    db.execute(
        """INSERT INTO devices (device_id, profile, labels, online, conn, last_seen,
               last_heartbeat, heartbeat_interval, agent_version, capabilities)
           VALUES (?, ?, '{}', 1, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (device_id) DO UPDATE SET
               profile = excluded.profile, online = 1, conn = excluded.conn,
               last_seen = excluded.last_seen, last_heartbeat = excluded.last_heartbeat,
               heartbeat_interval = excluded.heartbeat_interval,
               agent_version = excluded.agent_version, capabilities = excluded.capabilities""",
        (
            e.device_id,
            e.profile,
            e.conn,
            e.now,
            e.now,
            e.heartbeat_interval,
            e.agent_version,
            json.dumps(e.capabilities, sort_keys=True),
        ),
    )


def _apply_heartbeat(db: sqlite_utils.Database, e: HeartbeatSeen) -> None:
    db.execute(
        """UPDATE devices SET online = 1, conn = ?, last_seen = ?, last_heartbeat = ?,
               heartbeat_interval = ?, load = ?
           WHERE device_id = ?""",
        (
            e.conn,
            e.now,
            e.now,
            e.heartbeat_interval,
            json.dumps(e.load, sort_keys=True),
            e.device_id,
        ),
    )


def _expire_silent(db: sqlite_utils.Database, now: float, intervals: float) -> list[str]:
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        rows = db.execute(
            """SELECT device_id FROM devices
               WHERE online = 1 AND last_seen IS NOT NULL AND heartbeat_interval IS NOT NULL
                 AND last_seen + heartbeat_interval * ? < ?""",
            (intervals, now),
        ).fetchall()
        ids = [r["device_id"] for r in rows]
        db.conn.executemany(
            "UPDATE devices SET online = 0 WHERE device_id = ?", [(i,) for i in ids]
        )
    return ids


def _devices(db: sqlite_utils.Database) -> list[Device]:
    rows = db.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
    return [Device.from_row(r) for r in rows]


def _device(db: sqlite_utils.Database, device_id: str) -> Device | None:
    row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return Device.from_row(row) if row else None
