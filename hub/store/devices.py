"""Devices in the registry: enrollment rows, names, labels, queries and counts.

Presence (hello, heartbeats, wills) is in presence.py; its names are re-exported here,
where the store calls them as `devices.*`.

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hub.store import events
from hub.store.presence import (
    ConnectionLost,
    HeartbeatSeen,
    HelloSeen,
    PresenceEvent,
    expire_silent,
    record_presence,
)
from hub.store.sql import Row, Sql
from outpost import devicenames as names

__all__ = [
    "ConnectionLost",
    "Device",
    "HeartbeatSeen",
    "HelloSeen",
    "ListedDevice",
    "NameTakenError",
    "PresenceEvent",
    "TooManyLabelsError",
    "add_device",
    "all_devices",
    "expire_silent",
    "find_device",
    "fleet_counts",
    "fleet_models",
    "free_name",
    "get_device",
    "list_devices",
    "record_presence",
    "resolve",
    "state_counts",
    "update_device",
]


class NameTakenError(ValueError):
    """Another device already has the name asked for."""


class TooManyLabelsError(ValueError):
    """The labels merged would be more than a device may carry (nothing changed)."""


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
    store: dict[str, Any] | None = None
    runtime: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    task_slots: int = 0
    task_latency_ms: float | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None  # the API token's subject, or `cli:<OS user>`
    name: str = ""  # unique in the fleet; the id until one is given
    bundle_at: float | None = None  # when its newest courier bundle imported was made

    @property
    def state(self) -> str:
        """online, offline or revoked: a revoked device is never counted as either of
        the others, whatever its last heartbeat said."""
        if self.revoked_at is not None:
            return "revoked"
        return "online" if self.online else "offline"

    @classmethod
    def from_row(cls, row: Row) -> Device:
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
            store=json.loads(row["store"]) if row["store"] else None,
            runtime=row["runtime"],
            models=json.loads(row["models"] or "[]"),
            task_slots=row["task_slots"],
            task_latency_ms=row["task_latency_ms"],
            enrolled_at=row["enrolled_at"],
            cert_serial=row["cert_serial"],
            cert_not_before=row["cert_not_before"],
            cert_not_after=row["cert_not_after"],
            revoked_at=row["revoked_at"],
            revoked_by=row["revoked_by"],
            name=row["name"] or row["device_id"],
            bundle_at=row["bundle_at"],
        )


class ListedDevice(NamedTuple):
    """A device as `list_devices` reads it: the columns `Device` is made of, the JSON
    ones left as the text the hub stored (an answer splices that text in as it is,
    instead of parsing it into dicts to encode them again). The hub wrote each with
    `json.dumps` from values checked where they entered (finite numbers only)."""

    device_id: str
    name: str | None
    profile: str
    labels: str  # JSON object: label -> value
    online: int
    last_seen: float | None
    last_heartbeat: float | None
    heartbeat_interval: float | None
    agent_version: str | None
    capabilities: str | None  # JSON object
    load: str | None  # JSON object
    store: str | None  # JSON object
    enrolled_at: float | None
    cert_serial: str | None
    cert_not_before: float | None
    cert_not_after: float | None
    runtime: str | None
    models: str | None  # JSON array
    task_slots: int
    task_latency_ms: float | None
    revoked_at: float | None
    revoked_by: str | None
    bundle_at: float | None


_LISTED = ", ".join(ListedDevice._fields)


def add_device(db: Sql, d: Device) -> str:
    """Register an enrolled device under its name, or the first free `name-N` when
    another device has it; the name it got."""
    with db.write():
        return _add_device(db, d)


def _add_device(db: Sql, d: Device) -> str:
    name = free_name(db, d.name) if d.name else d.device_id
    db.execute(
        """INSERT INTO devices (device_id, name, profile, labels, enrolled_at, cert_serial,
               cert_not_before, cert_not_after, online)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)""",
        (
            d.device_id,
            name,
            d.profile,
            json.dumps(d.labels, sort_keys=True),
            d.enrolled_at,
            d.cert_serial,
            d.cert_not_before,
            d.cert_not_after,
        ),
    )
    if d.cert_serial is not None:
        db.execute(
            """INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at,
                   reason) VALUES (?, ?, ?, ?, ?, 'enroll')""",
            (d.cert_serial, d.device_id, d.cert_not_before, d.cert_not_after, d.enrolled_at),
        )
    events.add(db, d.device_id, d.enrolled_at or 0.0, "enrolled", f"as {name}, profile {d.profile}")
    return name


def free_name(db: Sql, base: str) -> str:
    """`base`, or the first of `base-2`, `base-3`, ... that no device has."""
    # Every numbered candidate starts with this stem (up to `base-9999999`): a long base
    # is cut shorter the longer its number grows, and what the cut leaves at its end
    # ('.', '_', '-') is stripped. Matched by LIKE ('_' matches any character: more
    # rows, no fewer) and then exactly, below.
    stem = base[: names.MAX_LENGTH - 8].rstrip("._-")
    taken = {
        r["name"]
        for r in db.execute(
            "SELECT name FROM devices WHERE name = ? OR name LIKE ?", (base, stem + "%")
        )
    }
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = names.numbered(base, n)
    return candidate


def all_devices(db: Sql) -> list[Device]:
    rows = db.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
    return [Device.from_row(r) for r in rows]


def get_device(db: Sql, device_id: str) -> Device | None:
    row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return Device.from_row(row) if row else None


def resolve(db: Sql, ref: str) -> str | None:
    """The id of the device `ref` names: its id or its name (a name never looks like an
    id, so the two cannot clash); None if no device has either."""
    row = db.execute(
        "SELECT device_id FROM devices WHERE device_id = ? OR name = ?", (ref, ref)
    ).fetchone()
    return row["device_id"] if row else None


def find_device(db: Sql, ref: str) -> Device | None:
    """The device `ref` names (its id or its name), in one read."""
    row = db.execute("SELECT * FROM devices WHERE device_id = ? OR name = ?", (ref, ref)).fetchone()
    return Device.from_row(row) if row else None


def list_devices(
    db: Sql,
    *,
    online: bool | None,
    profile: str | None,
    labels: dict[str, str],
    after: str | None,
    limit: int,
) -> list[ListedDevice]:
    """A page of devices in id order, after the id `after` (keyset: stable under inserts)."""
    where: list[str] = ["1 = 1"]
    params: list[str | int] = []
    if online is not None:
        # Revoked devices are neither online nor offline: an offline listing names the
        # enrolled devices that should be connected and are not.
        where.append("online = ? AND revoked_at IS NULL")
        params.append(int(online))
    if profile is not None:
        where.append("profile = ?")
        params.append(profile)
    for key, value in sorted(labels.items()):
        # Label keys are checked where they enter (letters, digits, . _ -).
        where.append(f"{db.json_text('labels')} = ?")
        params.extend([db.json_path(key), value])
    if after is not None:
        where.append("device_id > ?")
        params.append(after)
    rows = db.execute(
        f"SELECT {_LISTED} FROM devices WHERE {' AND '.join(where)} ORDER BY device_id LIMIT ?",  # noqa: S608 - only fixed fragments; values are bound
        [*params, limit],
    ).fetchall()
    return list(map(ListedDevice._make, rows))


def update_device(
    db: Sql,
    device_id: str,
    changes: dict[str, str | None],
    name: str | None,
    now: float,
    max_labels: int | None,
) -> Device | None:
    """Merge label `changes` into the device's labels (None deletes a label) and rename it
    if `name` is given; None if there is no such device, NameTakenError if another device
    has that name, TooManyLabelsError if it would carry over `max_labels` labels (and
    nothing changed)."""
    with db.write():
        row = db.execute(
            "SELECT labels, name FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            return None
        merged = {**json.loads(row["labels"]), **changes}
        count = sum(1 for value in merged.values() if value is not None)
        if max_labels is not None and count > max_labels:
            raise TooManyLabelsError(
                f"the device would carry {count} labels, over the {max_labels} allowed: "
                "remove some (a null value removes a label)"
            )
        if name is not None and name != row["name"]:
            if db.execute("SELECT 1 FROM devices WHERE name = ?", (name,)).fetchone():
                raise NameTakenError(f"another device is named {name!r}")
            db.execute("UPDATE devices SET name = ? WHERE device_id = ?", (name, device_id))
            events.add(db, device_id, now, "renamed", f"{row['name']} -> {name}")
        labels = json.loads(row["labels"])
        for key, value in changes.items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        if labels != json.loads(row["labels"]):
            db.execute(
                "UPDATE devices SET labels = ? WHERE device_id = ?",
                (json.dumps(labels, sort_keys=True), device_id),
            )
            shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
            events.add(db, device_id, now, "relabelled", f"labels {shown}")
    return get_device(db, device_id)


def fleet_models(db: Sql) -> set[tuple[str, str]]:
    """(name, version) of every model an unrevoked device reports, in any state."""
    found: set[tuple[str, str]] = set()
    for (models,) in db.execute(
        "SELECT models FROM devices WHERE revoked_at IS NULL AND models IS NOT NULL"
    ).fetchall():
        found.update((m["name"], m["version"]) for m in json.loads(models))
    return found


def fleet_counts(db: Sql) -> list[tuple[bool, str, int]]:
    """(online, profile, number of devices) for every combination present, of the
    unrevoked devices only: a revoked device is not an offline one (`state_counts`
    counts them)."""
    rows = db.execute(
        """SELECT online, profile, COUNT(*) AS n FROM devices WHERE revoked_at IS NULL
           GROUP BY online, profile"""
    ).fetchall()
    return [(bool(r["online"]), r["profile"], r["n"]) for r in rows]


def state_counts(db: Sql) -> dict[str, int]:
    """Devices in the registry by state: online, offline (unrevoked, not connected) and
    revoked, each counted once (one read: they add up to the registry's size)."""
    row = db.execute(
        """SELECT COALESCE(SUM(CASE WHEN revoked_at IS NULL AND online = 1 THEN 1 END), 0),
                  COALESCE(SUM(CASE WHEN revoked_at IS NULL AND online = 0 THEN 1 END), 0),
                  COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 END), 0)
           FROM devices"""
    ).fetchone()
    return {"online": int(row[0]), "offline": int(row[1]), "revoked": int(row[2])}
