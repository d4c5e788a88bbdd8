"""Migrations of what devices send and do: records, their stores, tasks, policy."""

from __future__ import annotations

from hub.store.sql import Sql


def m003_records(db: Sql) -> None:
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


def m004_device_store(db: Sql) -> None:
    # The device's own store as its heartbeats report it: fill, drops, refusals, wear.
    db.execute("ALTER TABLE devices ADD COLUMN store TEXT")


def m005_device_models(db: Sql) -> None:
    # What the device can run: its inference runtime and installed models (from hello
    # and heartbeats), the capability registry's input for allocating work.
    db.execute("ALTER TABLE devices ADD COLUMN runtime TEXT")
    db.execute("ALTER TABLE devices ADD COLUMN models TEXT")


def m006_tasks(db: Sql) -> None:
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


def m007_policy(db: Sql) -> None:
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


def m023_task_sweeps(db: Sql) -> None:
    # Each allocation pass looks among the tasks in flight for those past their deadline
    # and those whose lease lapsed. By state alone (tasks_queue's first column) that read
    # every task in flight: 41 ms a pass with 150,000 of them (25,000 busy devices).
    db.execute("CREATE INDEX tasks_deadline ON tasks (state, deadline)")
    db.execute("CREATE INDEX tasks_lease ON tasks (state, lease_expires)")


def m026_device_busy(db: Sql) -> None:
    # Until when a device that answered "full" is offered no task: asked again at once,
    # it was asked in a loop until the task's deadline (76 times in 4 s), each a commit.
    db.execute("ALTER TABLE devices ADD COLUMN busy_until REAL NOT NULL DEFAULT 0")
