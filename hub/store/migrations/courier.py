"""Migrations of courier bundles: what was imported, and each device's public key."""

from __future__ import annotations

from hub.store.sql import Sql


def m019_courier(db: Sql) -> None:
    # Each device bundle imported (a replay is refused by its id), the device's public
    # key (the hub encrypts its bundles for the device to it; a renewal keeps the key),
    # and when the device was last heard of by bundle.
    db.execute(
        """CREATE TABLE bundles_imported (
            bundle_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            imported_at REAL NOT NULL,
            records INTEGER NOT NULL
        )"""
    )
    db.execute("CREATE INDEX bundles_imported_by_device ON bundles_imported (device_id)")
    db.execute(
        """CREATE TABLE device_keys (
            device_id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL
        )"""
    )
    db.execute("ALTER TABLE devices ADD COLUMN bundle_at REAL")
    # Streams whose numbering the hub took from a device store by bundle, before that
    # store was aligned to the hub's marks: the store's id, so its next bundles (and the
    # store, told by the hub's bundle) know the numbers are the same (importer.py).
    db.execute(
        """CREATE TABLE bundle_numbering (
            device_id TEXT NOT NULL,
            stream TEXT NOT NULL,
            store_id TEXT NOT NULL,
            PRIMARY KEY (device_id, stream)
        )"""
    )
