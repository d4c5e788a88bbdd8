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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.store import events
from hub.store import policy as policy_store
from hub.store.sql import Sql, chunked, marks


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
    sealed_offers: bool = False  # it checks the seal on its offers of model releases


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

# A revoked device that still got through (the broker's CRL not yet reloaded, an external
# broker) is never online: it gets no work; nor is one held off for flooding, whose
# messages queued before its session ended come after the hold. (No comment inside the
# SQL: `translate` would take its apostrophe for a quote.)
_HELLO = """INSERT INTO devices (device_id, name, profile, labels, online, conn, last_seen,
               last_heartbeat, heartbeat_interval, agent_version, capabilities, runtime, models,
               task_slots, task_inbox, sealed_offers)
           VALUES (?, ?, ?, '{}', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (device_id) DO UPDATE SET
               profile = excluded.profile, conn = excluded.conn,
               online = CASE WHEN devices.revoked_at IS NULL
                   AND (devices.held_until IS NULL OR devices.held_until <= ?) THEN 1 ELSE 0 END,
               last_seen = excluded.last_seen, last_heartbeat = excluded.last_heartbeat,
               heartbeat_interval = excluded.heartbeat_interval,
               agent_version = excluded.agent_version, capabilities = excluded.capabilities,
               runtime = excluded.runtime, models = excluded.models,
               task_slots = excluded.task_slots, task_inbox = excluded.task_inbox,
               sealed_offers = excluded.sealed_offers"""
# A heartbeat takes the device's connection only when it brings the device online.
# While online, the connection is the latest hello's: a heartbeat of an older one that
# arrives after it (from another replica, or a slow queue) must not take it back, or the
# older connection's will would then mark a connected device offline.
_HEARTBEAT = """UPDATE devices SET online = CASE WHEN revoked_at IS NULL
                   AND (held_until IS NULL OR held_until <= ?) THEN 1 ELSE 0 END,
               conn = CASE WHEN online = 1 AND conn IS NOT NULL THEN conn ELSE ? END,
               last_seen = ?,
               last_heartbeat = ?,
               heartbeat_interval = ?, load = ?, store = COALESCE(?, store),
               models = COALESCE(?, models)
           WHERE device_id = ?"""
_LOST = "UPDATE devices SET online = 0 WHERE device_id = ?"


@dataclass
class _Row:
    """What presence needs of a device's row, as the batch has left it so far."""

    online: bool
    conn: str | None
    barred: bool  # revoked, or held off for flooding: never online, whatever it sends


def record_presence(db: Sql, seen: list[PresenceEvent]) -> list[bool]:
    """Apply a batch of presence in order; for each event, whether it changed the
    device's online state.

    The batch's device rows are read once at the start (in chunks, by id) and followed
    in memory as each event changes them; the writes go out at the end, the devices'
    in event order with each run of one statement sent as one `executemany`, then the
    policy reports, then the events for the sinks in the order they happened. Writes to
    different tables do not depend on one another, so this is the same as applying the
    events one by one, with two statements per batch in place of two per event (a
    round trip each on PostgreSQL: 240 us per heartbeat, one at a time)."""
    lock = ""
    if db.dialect == "postgresql":
        # Replicas apply presence at once, batches of hundreds of devices each, beside the
        # leader's liveness sweep (which reads every online device). As SERIALIZABLE units
        # they were reported as conflicts (a batch read rows another wrote) until they
        # failed 30 times over at 10,000 devices on two replicas, and heartbeats came late
        # enough for the sweep to mark devices offline. Presence needs no more than each
        # device's row read and written under its lock: READ COMMITTED with FOR UPDATE
        # (the read waits for another replica's write of those rows, then sees them).
        # Rows are locked in id order, so two replicas' batches never deadlock.
        db.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        lock = " ORDER BY device_id FOR UPDATE"
    changed: list[bool] = []
    with db.soft(), db.write():
        rows: dict[str, _Row] = {}
        for chunk in chunked(sorted({e.device_id for e in seen})):
            for device_id, online, conn, revoked_at, held_until in db.execute(
                "SELECT device_id, online, conn, revoked_at, held_until FROM devices "  # noqa: S608 - only placeholders
                f"WHERE device_id IN ({marks(len(chunk))}){lock}",
                chunk,
            ).fetchall():
                held = held_until is not None and held_until > seen[0].now
                rows[device_id] = _Row(bool(online), conn, revoked_at is not None or held)
        writes = _Writes(db)
        news: list[tuple[str, float, events.Kind, str]] = []
        reports = policy_store.Reports(
            db, [e.device_id for e in seen if isinstance(e, HeartbeatSeen) and e.policy is not None]
        )
        for event in seen:
            row = rows.get(event.device_id)
            was_online = row is not None and row.online
            # A revoked device that still got through is never online: no "online" event.
            revoked = row is not None and row.barred
            match event:
                case HelloSeen():
                    writes.add(_HELLO, _hello_values(event))
                    if row is None:
                        rows[event.device_id] = _Row(True, event.conn, False)
                    else:
                        row.online, row.conn = not row.barred, event.conn
                    changed.append(not was_online and not revoked)
                    if not was_online and not revoked:
                        news.append((event.device_id, event.now, "online", _agent(event)))
                case HeartbeatSeen():
                    if row is not None and not was_online and not revoked:  # before the beat's news
                        news.append((event.device_id, event.now, "online", "heartbeat"))
                    if event.policy is not None:
                        p = event.policy
                        news += reports.add(
                            event.device_id,
                            p["version"],
                            p["rejected_version"],
                            p["reason"],
                            event.now,
                        )
                    writes.add(_HEARTBEAT, _heartbeat_values(event))
                    if row is not None:
                        if not (row.online and row.conn is not None):
                            row.conn = event.conn
                        row.online = not row.barred
                    changed.append(row is not None and not was_online and not revoked)
                case ConnectionLost():
                    # Only the current connection's will counts: the will of an older
                    # connection can arrive after the device has already reconnected.
                    lost = row is not None and was_online and row.conn == event.conn
                    if row is not None and lost:
                        writes.add(_LOST, (event.device_id,))
                        row.online = False
                        news.append((event.device_id, event.now, "offline", "link lost"))
                    changed.append(lost)
        writes.flush()
        reports.write()
        events.add_many(db, news)
    return changed


class _Writes:
    """Statements in order, each run of one statement sent as one `executemany`."""

    def __init__(self, db: Sql) -> None:
        self._db = db
        self._runs: list[tuple[str, list[Sequence[Any]]]] = []

    def add(self, sql: str, values: Sequence[Any]) -> None:
        if self._runs and self._runs[-1][0] is sql:
            self._runs[-1][1].append(values)
        else:
            self._runs.append((sql, [values]))

    def flush(self) -> None:
        for sql, values in self._runs:
            self._db.executemany(sql, values)
        self._runs = []


def _agent(e: HelloSeen) -> str:
    return f"agent {e.agent_version}" if e.agent_version else ""


def _hello_values(e: HelloSeen) -> tuple[Any, ...]:
    # A device we did not enroll (say the database was restored from an older backup)
    # still holds a certificate of our CA, or the broker would not have let it in: the
    # hello registers it with empty labels rather than ignore it.
    return (
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
        int(e.sealed_offers),
        e.now,  # a hold lapsed by now
    )


def _heartbeat_values(e: HeartbeatSeen) -> tuple[Any, ...]:
    return (
        e.now,  # a hold lapsed by now
        e.conn,
        e.now,
        e.now,
        e.heartbeat_interval,
        json.dumps(e.load, sort_keys=True),
        json.dumps(e.store, sort_keys=True) if e.store is not None else None,
        json.dumps(e.models, sort_keys=True) if e.models is not None else None,
        e.device_id,
    )


def slowest_heartbeat(db: Sql) -> float:
    """The longest heartbeat interval of the devices online now (0.0: none online)."""
    row = db.execute("SELECT MAX(heartbeat_interval) FROM devices WHERE online = 1").fetchone()
    return float(row[0] or 0.0)


def expire_silent(db: Sql, now: float, intervals: float) -> list[str]:
    with db.write():
        rows = db.execute(
            """SELECT device_id FROM devices
               WHERE online = 1 AND last_seen IS NOT NULL AND heartbeat_interval IS NOT NULL
                 AND last_seen + heartbeat_interval * ? < ?""",
            (intervals, now),
        ).fetchall()
        ids = [r["device_id"] for r in rows]
        db.executemany(_LOST, [(i,) for i in ids])
        events.add_many(db, [(i, now, "offline", "heartbeats stopped") for i in ids])
    return ids
