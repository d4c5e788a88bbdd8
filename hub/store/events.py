"""A device's event log: what happened to it, as an operator reads it (link lost and
restored, models activated or failed, policy applied or refused, renewals, revocation,
renames).

Each event is written inside the transaction of the change it describes, so the log
never names a change that rolled back and never misses one that committed. The log is
bounded: `prune` keeps the newest `KEEP_PER_DEVICE` events of each device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from hub.store import outbox
from hub.store.sql import Sql

Kind = Literal[
    "enrolled",
    "online",
    "offline",
    "model_activated",
    "model_failed",
    "model_rolled_back",
    "policy_applied",
    "policy_refused",
    "renewed",
    "revoked",
    "renamed",
    "relabelled",
    "bundle_imported",
]
# The sinks' event type of each kind (outbox.py prefixes org.outpost.).
PUBLISHED_AS: Final[dict[str, str]] = {
    "enrolled": "device.enrolled",
    "online": "device.online",
    "offline": "device.offline",
    "model_activated": "model.activated",
    "model_failed": "model.failed",
    "model_rolled_back": "model.rolled_back",
    "policy_applied": "policy.applied",
    "policy_refused": "policy.refused",
    "renewed": "device.renewed",
    "revoked": "device.revoked",
    "renamed": "device.renamed",
    "relabelled": "device.relabelled",
    "bundle_imported": "device.bundle_imported",
}
KEEP_PER_DEVICE: Final = 500
DETAIL_MAX: Final = 500  # characters: a device's own words (an error) are cut to this


@dataclass(frozen=True)
class DeviceEvent:
    """One thing that happened to a device."""

    id: int
    device_id: str
    at: float
    kind: str
    detail: str


def add(db: Sql, device_id: str, at: float, kind: Kind, detail: str = "") -> None:
    """Record an event (and publish it to the sinks), inside the caller's transaction."""
    add_many(db, [(device_id, at, kind, detail)])


def add_many(db: Sql, events: list[tuple[str, float, Kind, str]]) -> None:
    """Record several events (device, at, kind, detail), inside the caller's transaction."""
    if events:
        db.executemany(
            "INSERT INTO device_events (device_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            [(d, at, kind, detail[:DETAIL_MAX]) for d, at, kind, detail in events],
        )
        outbox.emit_many(
            db,
            [
                (PUBLISHED_AS[kind], d, {"detail": detail[:DETAIL_MAX]}, at)
                for d, at, kind, detail in events
            ],
        )


def newest_first(db: Sql, device_id: str, *, before: int | None, limit: int) -> list[DeviceEvent]:
    """A page of the device's log, newest first, before the event id `before` (keyset)."""
    rows = db.execute(
        """SELECT id, device_id, at, kind, detail FROM device_events
           WHERE device_id = ? AND id < ? ORDER BY id DESC LIMIT ?""",
        (device_id, before if before is not None else 2**62, limit),
    ).fetchall()
    return [DeviceEvent(r["id"], r["device_id"], r["at"], r["kind"], r["detail"]) for r in rows]


def prune(db: Sql, keep: int = KEEP_PER_DEVICE) -> int:
    """Delete all but each device's newest `keep` events; how many went."""
    with db.write():
        return db.execute(
            """DELETE FROM device_events WHERE id IN (
                   SELECT id FROM (
                       SELECT id, ROW_NUMBER() OVER (
                           PARTITION BY device_id ORDER BY id DESC) AS n
                       FROM device_events) ranked
                   WHERE n > ?)""",
            (keep,),
        ).rowcount
