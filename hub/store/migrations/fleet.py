"""Migrations of the fleet's registry: devices, their certificates, names and event
logs, API tokens, holds, leadership."""

from __future__ import annotations

from hub.store.sql import Sql


def m001_registry(db: Sql) -> None:
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


def m002_api(db: Sql) -> None:
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
    if db.dialect == "postgresql":
        # The token list pages on SQLite's implicit rowid: give PostgreSQL the same.
        db.execute("ALTER TABLE api_tokens ADD COLUMN rowid BIGSERIAL")


def m008_device_certs(db: Sql) -> None:
    # Every certificate issued to a device (enrollment and renewals): the CRL lists them
    # all when the device is revoked, and a renewal must present one of them.
    db.execute("ALTER TABLE devices ADD COLUMN revoked_at REAL")
    db.execute(
        """CREATE TABLE device_certs (
            serial TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            not_before REAL NOT NULL,
            not_after REAL NOT NULL,
            issued_at REAL NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX device_certs_device ON device_certs (device_id)")
    db.execute(
        """INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at, reason)
           SELECT cert_serial, device_id, cert_not_before, cert_not_after,
                  COALESCE(enrolled_at, cert_not_before), 'enroll'
           FROM devices WHERE cert_serial IS NOT NULL"""
    )


def m011_revoked_by(db: Sql) -> None:
    # Who revoked a device: the API token's subject, or `cli:<OS user>` for the command.
    # Devices revoked before this migration keep NULL: nobody recorded who.
    db.execute("ALTER TABLE devices ADD COLUMN revoked_by TEXT")


def m012_holds(db: Sql) -> None:
    # A device that flooded the hub is held off for a while: its certificates are listed
    # in the CRL as on hold (hub/mqtt/holds.py) from held_at until held_until.
    db.execute("ALTER TABLE devices ADD COLUMN held_at REAL")
    db.execute("ALTER TABLE devices ADD COLUMN held_until REAL")


def m013_leadership(db: Sql) -> None:
    # One row: which replica leads, until when, and the epoch that fences its work
    # (leadership.py). Seeded lapsed, so the first replica to claim it takes it.
    db.execute(
        """CREATE TABLE leadership (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            expires_at REAL NOT NULL
        )"""
    )
    db.execute("INSERT INTO leadership (name, holder, epoch, expires_at) VALUES ('hub', '', 0, 0)")


def m015_device_names(db: Sql) -> None:
    # A human name per device, unique in the fleet, usable wherever its id is. Devices
    # enrolled before names existed are named by their id until an operator renames them.
    db.execute("ALTER TABLE devices ADD COLUMN name TEXT")
    db.execute("UPDATE devices SET name = device_id")
    db.execute("CREATE UNIQUE INDEX devices_name ON devices (name)")


def m016_device_events(db: Sql) -> None:
    # What happened to each device, written in the transaction of the change (events.py).
    db.execute(
        """CREATE TABLE device_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX device_events_by_device ON device_events (device_id, id)")


def m020_agent_releases(db: Sql) -> None:
    # Agent releases the hub took and signed (hub/fleet/agentreleases.py); their files
    # are in the data folder's agent-releases/<version>/.
    db.execute(
        """CREATE TABLE agent_releases (
            version TEXT PRIMARY KEY,
            manifest TEXT NOT NULL,
            document BLOB NOT NULL,
            signature BLOB NOT NULL,
            uploaded_at REAL NOT NULL,
            uploaded_by TEXT NOT NULL
        )"""
    )


def m021_agent_release_files(db: Sql) -> None:
    # Agent release files in the database, for replicas (as model_files, migration 014):
    # an upload lands on one replica's disk, a device may download from any. A single
    # hub on SQLite keeps its files on disk only and leaves this empty.
    db.execute(
        """CREATE TABLE agent_release_files (
            version TEXT NOT NULL,
            name TEXT NOT NULL,
            content BLOB NOT NULL,
            PRIMARY KEY (version, name)
        )"""
    )


def m025_enroll_retry(db: Sql) -> None:
    # The key a bootstrap token enrolled (the sha256 of its SubjectPublicKeyInfo): the
    # same device asking again with it, its first answer lost, is answered again.
    db.execute("ALTER TABLE enroll_tokens ADD COLUMN key_sha256 TEXT")


def m027_enroll_answer(db: Sql) -> None:
    # The certificate a bootstrap token's enrollment issued: the same device asking
    # again (its first answer lost) gets that one back, not a new one each time.
    db.execute("ALTER TABLE enroll_tokens ADD COLUMN certificate_pem TEXT")


def m028_enroll_token_revocation(db: Sql) -> None:
    # A bootstrap token revoked before its time (leaked, or no longer wanted).
    db.execute("ALTER TABLE enroll_tokens ADD COLUMN revoked_at REAL")
