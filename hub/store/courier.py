"""Courier bundles in the registry: which device bundles were imported (a replay is
refused by its id), each device's public key (hub bundles are encrypted to it) or the
certificate renewed for it by bundle and not yet confirmed, and when a device was last
heard of by bundle."""

from __future__ import annotations

from dataclasses import dataclass

from hub.store import events
from hub.store import policy as policy_store
from hub.store.sql import Sql


@dataclass(frozen=True)
class Inventory:
    """What a device's bundle says it runs, and how it is doing (as a heartbeat would)."""

    models_json: str  # as a hello's models are kept: a JSON list of name, version, state...
    task_slots: int
    load_json: str | None = None  # as a heartbeat's are kept
    store_json: str | None = None
    policy: tuple[int, int, str] | None = None  # applied version, rejected version, reason


@dataclass(frozen=True)
class Imported:
    bundle_id: str
    device_id: str
    created_at: float
    imported_at: float
    records: int


def imported(db: Sql, bundle_id: str) -> Imported | None:
    row = db.execute(
        "SELECT bundle_id, device_id, created_at, imported_at, records FROM bundles_imported"
        " WHERE bundle_id = ?",
        (bundle_id,),
    ).fetchone()
    return Imported(*row) if row else None


def record_import(
    db: Sql, bundle: Imported, agent_version: str, inventory: Inventory | None, detail: str
) -> bool:
    """Note the bundle as imported and the device as heard of at its making; what it
    runs (agent version, models, task slots) only if nothing newer was heard of it (an
    old bundle after newer MQTT traffic changes none of it, nor moves `last_seen` or
    `bundle_at` back; with no `inventory`, the importer found it so already). False if
    it was imported already (by another replica, just now)."""
    with db.write():
        if imported(db, bundle.bundle_id) is not None:
            return False
        db.execute(
            "INSERT INTO bundles_imported (bundle_id, device_id, created_at, imported_at,"
            " records) VALUES (?, ?, ?, ?, ?)",
            (bundle.bundle_id, bundle.device_id, bundle.created_at, bundle.imported_at,
             bundle.records),
        )  # fmt: skip
        if inventory is not None:
            _take_inventory(db, bundle, agent_version, inventory)
        events.add(db, bundle.device_id, bundle.imported_at, "bundle_imported", detail)
    return True


def _take_inventory(db: Sql, bundle: Imported, agent_version: str, inventory: Inventory) -> None:
    db.execute(
        "UPDATE devices SET"
        " agent_version = CASE WHEN last_seen IS NULL OR last_seen <= ? THEN ?"
        " ELSE agent_version END,"
        " models = CASE WHEN last_seen IS NULL OR last_seen <= ? THEN ? ELSE models END,"
        " task_slots = CASE WHEN last_seen IS NULL OR last_seen <= ? THEN ?"
        " ELSE task_slots END,"
        " load = CASE WHEN last_seen IS NULL OR last_seen <= ? THEN COALESCE(?, load)"
        " ELSE load END,"
        " store = CASE WHEN last_seen IS NULL OR last_seen <= ? THEN COALESCE(?, store)"
        " ELSE store END,"
        " bundle_at = CASE WHEN bundle_at IS NULL OR bundle_at < ? THEN ? ELSE bundle_at END,"
        " last_seen = CASE WHEN last_seen IS NULL OR last_seen < ? THEN ? ELSE last_seen END"
        " WHERE device_id = ?",
        (bundle.created_at, agent_version, bundle.created_at, inventory.models_json,
         bundle.created_at, inventory.task_slots, bundle.created_at, inventory.load_json,
         bundle.created_at, inventory.store_json, bundle.created_at, bundle.created_at,
         bundle.created_at, bundle.created_at, bundle.device_id),
    )  # fmt: skip
    if inventory.policy is not None:  # versions only move forward there
        applied, rejected, reason = inventory.policy
        policy_store.report(db, bundle.device_id, applied, rejected, reason, bundle.created_at)


def keep_renewed(db: Sql, device_id: str, certificate_pem: str) -> None:
    """Keep a certificate renewed by bundle in place of the device's public key (it holds
    the same key) until a bundle of the device presents it: until then, each bundle for
    the device carries it, so that an ack lost on the way loses no certificate."""
    with db.write():
        db.execute(
            "UPDATE device_keys SET public_key = ? WHERE device_id = ?",
            (certificate_pem, device_id),
        )


def remember_key(db: Sql, device_id: str, public_key_pem: str) -> None:
    with db.write():
        db.execute(
            "INSERT INTO device_keys (device_id, public_key) VALUES (?, ?)"
            " ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key",
            (device_id, public_key_pem),
        )


def device_key(db: Sql, device_id: str) -> str | None:
    """The device's key as PEM: its public key, or a certificate renewed by bundle that
    the device has not presented yet (`keep_renewed`)."""
    row = db.execute(
        "SELECT public_key FROM device_keys WHERE device_id = ?", (device_id,)
    ).fetchone()
    return str(row[0]) if row else None


def numbering(db: Sql, device_id: str) -> dict[str, str]:
    """Per stream: the device store whose numbering the hub took by bundle."""
    rows = db.execute(
        "SELECT stream, store_id FROM bundle_numbering WHERE device_id = ?", (device_id,)
    ).fetchall()
    return {str(stream): str(store) for stream, store in rows}


def adopt_numbering(db: Sql, device_id: str, stream: str, store_id: str) -> None:
    with db.write():
        db.execute(
            "INSERT INTO bundle_numbering (device_id, stream, store_id) VALUES (?, ?, ?)"
            " ON CONFLICT (device_id, stream) DO UPDATE SET store_id = excluded.store_id",
            (device_id, stream, store_id),
        )
