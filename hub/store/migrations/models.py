"""Migrations of models: releases and roll-outs, their statistics and files, drift."""

from __future__ import annotations

from hub.store.sql import Sql


def m009_models(db: Sql) -> None:
    db.execute(
        """CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            manifest TEXT NOT NULL,
            document BLOB NOT NULL,
            signature BLOB NOT NULL,
            uploaded_at REAL NOT NULL,
            uploaded_by TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )"""
    )
    db.execute(
        """CREATE TABLE rollouts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            selector TEXT NOT NULL,
            canary_share REAL NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE rollout_devices (
            rollout_id INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            released_at REAL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (rollout_id, device_id)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX rollout_devices_device ON rollout_devices (device_id)")


def m010_model_stats(db: Sql) -> None:
    # Folded from devices' metric roll-ups (see modelstats.py); `hour` is the epoch second
    # its hour starts. JSON columns: confidence [10 counts], labels and latency {key: n}.
    db.execute(
        """CREATE TABLE model_stats (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            hour INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            count INTEGER NOT NULL,
            confidence TEXT NOT NULL,
            labels TEXT NOT NULL,
            latency TEXT NOT NULL,
            latency_sum_ms REAL NOT NULL,
            PRIMARY KEY (model, version, hour, device_id)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX model_stats_hour ON model_stats (hour)")
    db.execute(
        """CREATE TABLE device_errors (
            device_id TEXT NOT NULL,
            hour INTEGER NOT NULL,
            errors TEXT NOT NULL,
            PRIMARY KEY (device_id, hour)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX device_errors_hour ON device_errors (hour)")
    db.execute(
        """CREATE TABLE device_health (
            device_id TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            store TEXT NOT NULL,
            tasks TEXT NOT NULL
        )"""
    )


def m014_model_files(db: Sql) -> None:
    # Model files in the database, for replicas: an upload lands on one replica's disk,
    # a device may download from any (hub/models/releases.py copies it to a local cache). A
    # single hub on SQLite keeps its files on disk only and leaves this empty.
    db.execute(
        """CREATE TABLE model_files (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            content BLOB NOT NULL,
            PRIMARY KEY (name, version)
        )"""
    )


def m018_drift_levels(db: Sql) -> None:
    # The drift level last seen per device and model version (hub/models/driftwatch.py),
    # so that each change of level is published once, whichever replica leads.
    db.execute(
        """CREATE TABLE drift_levels (
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            device_id TEXT NOT NULL,
            level TEXT NOT NULL,
            changed_at REAL NOT NULL,
            PRIMARY KEY (model, version, device_id)
        )"""
    )


def m022_shadow_rollouts(db: Sql) -> None:
    # Shadow roll-outs (hub/store/shadows.py): a roll-out's mode and its promotion
    # criteria, and the comparisons devices report in their roll-ups, per candidate,
    # live version and device (counts since the candidate was first shadowed there).
    db.execute("ALTER TABLE rollouts ADD COLUMN mode TEXT NOT NULL DEFAULT 'staged'")
    db.execute("ALTER TABLE rollouts ADD COLUMN criteria TEXT NOT NULL DEFAULT '{}'")
    db.execute(
        """CREATE TABLE shadow_stats (
            model TEXT NOT NULL,
            candidate TEXT NOT NULL,
            live TEXT NOT NULL,
            device_id TEXT NOT NULL,
            stats TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (model, candidate, live, device_id)
        )"""
    )


def m024_sealed_offers(db: Sql) -> None:
    # Offers of model releases are sealed (outpost/offerseal.py) for the devices that
    # check seals, numbered by one counter for the fleet: a device takes none older than
    # the last it took. `offer_seq` never goes back, not even past a restore from an
    # older backup: each new number is at least the clock's milliseconds.
    db.execute("ALTER TABLE devices ADD COLUMN sealed_offers INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE TABLE offer_seq (value INTEGER NOT NULL)")
    db.execute("INSERT INTO offer_seq (value) VALUES (0)")
