"""The hub database's schema, as named migrations applied in order, on either back-end.

Written in SQLite's types (INTEGER, REAL, TEXT, BLOB); on PostgreSQL each table
definition is given PostgreSQL's names for them (postgres.translate), so one list of
migrations makes both schemas. What only one back-end needs is marked by `db.dialect`.
"""

from __future__ import annotations

from collections.abc import Callable

from hub.store.sql import Sql

Migration = tuple[str, Callable[[Sql], None]]


def _m001_registry(db: Sql) -> None:
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


def _m002_api(db: Sql) -> None:
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


def _m003_records(db: Sql) -> None:
    # WITHOUT ROWID: rows live in the primary key's b-tree, which is also the order every
    # query reads them in (one device, one stream, by seq), so no second index is needed.
    db.execute(
        """CREATE TABLE records (
            device_id TEXT NOT NULL,
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            body BLOB NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (device_id, stream, seq)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE stream_marks (
            device_id TEXT NOT NULL,
            stream TEXT NOT NULL,
            hwm INTEGER NOT NULL,
            PRIMARY KEY (device_id, stream)
        ) WITHOUT ROWID"""
    )


def _m004_device_store(db: Sql) -> None:
    # The device's own store as its heartbeats report it: fill, drops, refusals, wear.
    db.execute("ALTER TABLE devices ADD COLUMN store TEXT")


def _m005_device_models(db: Sql) -> None:
    # What the device can run: its inference runtime and installed models (from hello
    # and heartbeats), the capability registry's input for allocating work.
    db.execute("ALTER TABLE devices ADD COLUMN runtime TEXT")
    db.execute("ALTER TABLE devices ADD COLUMN models TEXT")


def _m006_tasks(db: Sql) -> None:
    db.execute(
        """CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            input BLOB NOT NULL,
            dtype TEXT NOT NULL,
            priority INTEGER NOT NULL,
            deadline REAL NOT NULL,
            lease_s REAL NOT NULL,
            target TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            submitted_by TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            device_id TEXT,
            lease_expires REAL,
            excluded TEXT NOT NULL DEFAULT '[]',
            result TEXT,
            error TEXT NOT NULL DEFAULT '',
            finished_at REAL
        )"""
    )
    # The allocator reads the queue in priority order; the sweep finds held tasks.
    db.execute("CREATE INDEX tasks_queue ON tasks (state, priority DESC, deadline, seq)")
    db.execute("CREATE INDEX tasks_device ON tasks (device_id, state)")
    db.execute(
        """CREATE TABLE task_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            at REAL NOT NULL,
            state TEXT NOT NULL,
            device_id TEXT,
            attempt INTEGER NOT NULL,
            detail TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX task_events_task ON task_events (task_id, id)")
    # What the device said it can run at once (hello), and its recent task latency.
    db.execute("ALTER TABLE devices ADD COLUMN task_slots INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE devices ADD COLUMN task_latency_ms REAL")
    db.execute("ALTER TABLE devices ADD COLUMN task_inbox INTEGER NOT NULL DEFAULT 0")


def _m007_policy(db: Sql) -> None:
    db.execute(
        """CREATE TABLE policy_layers (
            name TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            selector TEXT NOT NULL,
            device_id TEXT,
            rank INTEGER NOT NULL,
            document TEXT NOT NULL,
            updated_at REAL NOT NULL,
            updated_by TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE device_policy (
            device_id TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            digest TEXT NOT NULL,
            document TEXT NOT NULL,
            issued_at REAL NOT NULL,
            published INTEGER NOT NULL,
            applied_version INTEGER NOT NULL DEFAULT 0,
            rejected_version INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT ''
        )"""
    )
    # One counter for every device's policy versions: it only grows.
    db.execute("CREATE TABLE policy_seq (value INTEGER NOT NULL)")
    db.execute("INSERT INTO policy_seq (value) VALUES (0)")


def _m008_device_certs(db: Sql) -> None:
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


def _m009_models(db: Sql) -> None:
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


def _m010_model_stats(db: Sql) -> None:
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


def _m011_revoked_by(db: Sql) -> None:
    # Who revoked a device: the API token's subject, or `cli:<OS user>` for the command.
    # Devices revoked before this migration keep NULL: nobody recorded who.
    db.execute("ALTER TABLE devices ADD COLUMN revoked_by TEXT")


def _m012_holds(db: Sql) -> None:
    # A device that flooded the hub is held off for a while: its certificates are listed
    # in the CRL as on hold (hub/mqtt/holds.py) from held_at until held_until.
    db.execute("ALTER TABLE devices ADD COLUMN held_at REAL")
    db.execute("ALTER TABLE devices ADD COLUMN held_until REAL")


def _m013_leadership(db: Sql) -> None:
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


def _m014_model_files(db: Sql) -> None:
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


def _m015_device_names(db: Sql) -> None:
    # A human name per device, unique in the fleet, usable wherever its id is. Devices
    # enrolled before names existed are named by their id until an operator renames them.
    db.execute("ALTER TABLE devices ADD COLUMN name TEXT")
    db.execute("UPDATE devices SET name = device_id")
    db.execute("CREATE UNIQUE INDEX devices_name ON devices (name)")


def _m016_device_events(db: Sql) -> None:
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


def _m017_outbox(db: Sql) -> None:
    # Events for the sinks (hub/sinks), written in the transaction of the change they
    # describe (outbox.py); each sink's cursor, state and counts; and the events a sink
    # refused for good.
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            type TEXT NOT NULL,
            subject TEXT NOT NULL,
            data TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX outbox_by_time ON outbox (at)")
    db.execute(
        """CREATE TABLE sink_cursors (
            sink TEXT PRIMARY KEY,
            position INTEGER NOT NULL,
            state TEXT NOT NULL,
            error TEXT NOT NULL,
            delivered INTEGER NOT NULL DEFAULT 0,
            retried INTEGER NOT NULL DEFAULT 0,
            dead_lettered INTEGER NOT NULL DEFAULT 0,
            overflowed INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE sink_dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            event_id TEXT NOT NULL,
            at REAL NOT NULL,
            type TEXT NOT NULL,
            subject TEXT NOT NULL,
            body TEXT NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX sink_dead_letters_by_sink ON sink_dead_letters (sink, id)")


MIGRATIONS: list[Migration] = [
    ("001_registry", _m001_registry),
    ("002_api", _m002_api),
    ("003_records", _m003_records),
    ("004_device_store", _m004_device_store),
    ("005_device_models", _m005_device_models),
    ("006_tasks", _m006_tasks),
    ("007_policy", _m007_policy),
    ("008_device_certs", _m008_device_certs),
    ("009_models", _m009_models),
    ("010_model_stats", _m010_model_stats),
    ("011_revoked_by", _m011_revoked_by),
    ("012_holds", _m012_holds),
    ("013_leadership", _m013_leadership),
    ("014_model_files", _m014_model_files),
    ("015_device_names", _m015_device_names),
    ("016_device_events", _m016_device_events),
    ("017_outbox", _m017_outbox),
]
