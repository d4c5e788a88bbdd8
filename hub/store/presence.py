"""Devices' presence: the hello, heartbeats and lost connections (wills, goodbyes) the
MQTT intake sees, applied to the registry in batches, and the devices whose heartbeats
stopped marked offline.

Apart from devices.py (enrollment rows and queries) because presence is written at the
pace of the fleet's messages, by the intake and the offline sweep, where the registry's
other rows change at an operator's pace. Each function runs on the store's worker
thread as one unit of work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hub.store import events
from hub.store import policy as policy_store
from hub.store.sql import Sql


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
    runtime: str = ""
    models: list[dict[str, Any]] = field(default_factory=list)
    task_slots: int = 0
    task_inbox: int = 0


@dataclass(frozen=True)
class HeartbeatSeen:
    """A device is alive and this busy."""

    device_id: str
    conn: str
    now: float
    heartbeat_interval: float
    load: dict[str, Any]
    store: dict[str, Any] | None = None
    models: list[dict[str, Any]] | None = None
    policy: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConnectionLost:
    """A device's connection `conn` ended (its last will, or its goodbye)."""

    device_id: str
    conn: str
    now: float


PresenceEvent = HelloSeen | HeartbeatSeen | ConnectionLost

_READ = "SELECT online, conn, revoked_at FROM devices WHERE device_id = ?"
_READ_LOCKED = _READ + " FOR UPDATE"  # PostgreSQL: see record_presence


def record_presence(db: Sql, seen: list[PresenceEvent]) -> list[bool]:
    changed = []
    read = _READ
    if db.dialect == "postgresql":
        # Replicas apply presence at once, batches of hundreds of devices each, beside the
        # leader's liveness sweep (which reads every online device). As SERIALIZABLE units
        # they were reported as conflicts (a batch read rows another wrote) until they
        # failed 30 times over at 10,000 devices on two replicas, and heartbeats came late
        # enough for the sweep to mark devices offline. Presence needs no more than each
        # device's row read and written under its lock: READ COMMITTED with FOR UPDATE
        # (the read waits for another replica's write of that row, then sees it).
        db.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        read = _READ_LOCKED
    with db.soft(), db.write():
        for event in seen:
            row = db.execute(read, (event.device_id,)).fetchone()
            was_online = bool(row and row["online"])
            # A revoked device that still got through is never online: no "online" event.
            revoked = bool(row and row["revoked_at"] is not None)
            match event:
                case HelloSeen():
                    _apply_hello(db, event)
                    changed.append(not was_online)
                    if not was_online and not revoked:
                        events.add(db, event.device_id, event.now, "online", _agent(event))
                case HeartbeatSeen():
                    if row is not None and not was_online and not revoked:  # before the beat's news
                        events.add(db, event.device_id, event.now, "online", "heartbeat")
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
                        events.add(db, event.device_id, event.now, "offline", "link lost")
                    changed.append(lost)
    return changed


def _agent(e: HelloSeen) -> str:
    return f"agent {e.agent_version}" if e.agent_version else ""


def _apply_hello(db: Sql, e: HelloSeen) -> None:
    # A device we did not enroll (say the database was restored from an older backup)
    # still holds a certificate of our CA, or the broker would not have let it in:
    # register it with empty labels rather than ignore it.
    db.execute(
        """INSERT INTO devices (device_id, name, profile, labels, online, conn, last_seen,
               last_heartbeat, heartbeat_interval, agent_version, capabilities, runtime, models,
               task_slots, task_inbox)
           VALUES (?, ?, ?, '{}', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (device_id) DO UPDATE SET
               profile = excluded.profile, conn = excluded.conn,
               -- a revoked device that still got through (the broker's CRL not yet
               -- reloaded, an external broker) is never online: it gets no work
               online = CASE WHEN devices.revoked_at IS NULL THEN 1 ELSE 0 END,
               last_seen = excluded.last_seen, last_heartbeat = excluded.last_heartbeat,
               heartbeat_interval = excluded.heartbeat_interval,
               agent_version = excluded.agent_version, capabilities = excluded.capabilities,
               runtime = excluded.runtime, models = excluded.models,
               task_slots = excluded.task_slots, task_inbox = excluded.task_inbox""",
        (
            e.device_id,
            e.device_id,
            e.profile,
            e.conn,
            e.now,
            e.now,
            e.heartbeat_interval,
            e.agent_version,
            json.dumps(e.capabilities, sort_keys=True),
            e.runtime,
            json.dumps(e.models, sort_keys=True),
            e.task_slots,
            e.task_inbox,
        ),
    )


def _apply_heartbeat(db: Sql, e: HeartbeatSeen) -> None:
    if e.policy is not None:
        policy_store.report(
            db,
            e.device_id,
            e.policy["version"],
            e.policy["rejected_version"],
            e.policy["reason"],
            e.now,
        )
    # A heartbeat takes the device's connection only when it brings the device online.
    # While online, the connection is the latest hello's: a heartbeat of an older one that
    # arrives after it (from another replica, or a slow queue) must not take it back, or
    # the older connection's will would then mark a connected device offline.
    db.execute(
        """UPDATE devices SET online = CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END,
               conn = CASE WHEN online = 1 AND conn IS NOT NULL THEN conn ELSE ? END,
               last_seen = ?,
               last_heartbeat = ?,
               heartbeat_interval = ?, load = ?, store = COALESCE(?, store),
               models = COALESCE(?, models)
           WHERE device_id = ?""",
        (
            e.conn,
            e.now,
            e.now,
            e.heartbeat_interval,
            json.dumps(e.load, sort_keys=True),
            json.dumps(e.store, sort_keys=True) if e.store is not None else None,
            json.dumps(e.models, sort_keys=True) if e.models is not None else None,
            e.device_id,
        ),
    )


def expire_silent(db: Sql, now: float, intervals: float) -> list[str]:
    with db.write():
        rows = db.execute(
            """SELECT device_id FROM devices
               WHERE online = 1 AND last_seen IS NOT NULL AND heartbeat_interval IS NOT NULL
                 AND last_seen + heartbeat_interval * ? < ?""",
            (intervals, now),
        ).fetchall()
        ids = [r["device_id"] for r in rows]
        db.executemany("UPDATE devices SET online = 0 WHERE device_id = ?", [(i,) for i in ids])
        events.add_many(db, [(i, now, "offline", "heartbeats stopped") for i in ids])
    return ids
