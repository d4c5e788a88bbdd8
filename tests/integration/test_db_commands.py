"""`outpost-hub init --db`, `db migrate` and `--db` as an operator meets them: a hub made
on PostgreSQL, a SQLite hub's data moved over whole, and clear refusals."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import msgpack
import psycopg
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access.apitokens import grant_record, mint
from hub.fleet.agentreleases import AgentShelf
from hub.fleet.enrollment import load_token_key
from hub.paths import HubPaths
from hub.store import AuditEntry, Device, HubStore, Layer, NewTask, StoredModel, Upload, outbox
from hub.store import agentreleases as registry
from hub.store.agentreleases import StoredAgentRelease
from hub.store.engine import migrate_sqlite
from hub.store.migrations import MIGRATIONS
from hub.store.sql import SqliteSql
from outpost.modelbundle import MODEL_FILE
from outpost.sqlite import open_database
from tests.support import REPO

MODEL_BYTES = bytes(range(256)) * 40


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def test_init_with_a_postgres_database_keeps_the_registry_there(
    tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "hub"
    made = _run("init", "--data", str(data), "--db", pg_url)
    token = _run("enroll-token", "--data", str(data), "--label", "site=north")

    assert made.returncode == 0, made.stderr
    assert f'db_url = "{pg_url}"' in (data / "hub.toml").read_text()
    assert not HubPaths(data).database.exists()  # no SQLite file was made beside it
    assert token.returncode == 0, token.stderr
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT labels FROM enroll_tokens").fetchone()
    assert row is not None
    assert row[0] == '{"site": "north"}'


def test_init_takes_libpqs_failover_url_and_names_a_broken_one_without_its_password(
    tmp_path: Path, pg_url: str
) -> None:
    """host:port,host:port (libpq's failover form) crashed naming the database, after the
    schema and keys were made; a URL libpq cannot parse printed its password."""
    parts = urlsplit(pg_url)
    host = f"{parts.hostname}:{parts.port}"
    failover = f"postgresql://{parts.username}@{host},{host}{parts.path}"
    broken = f"postgresql://{parts.username}:s3cret%zz@{host}{parts.path}"

    made = _run("init", "--data", str(tmp_path / "a"), "--db", failover)
    refused = _run("init", "--data", str(tmp_path / "b"), "--db", broken)

    assert made.returncode == 0, made.stderr
    assert f"database: postgresql://{parts.username}@{host},{host}" in made.stdout
    assert refused.returncode == 2, refused.stderr
    assert "the URL cannot be parsed" in refused.stderr
    assert "s3cret" not in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr


async def _fill(store: HubStore, paths: HubPaths) -> None:
    now = time.time()
    for n in range(3):
        await store.add_device(
            Device(
                device_id=f"dev-{n}",
                profile="generic",
                labels={"site": "north"},
                online=False,
                last_seen=None,
                last_heartbeat=None,
                heartbeat_interval=None,
                agent_version=None,
                capabilities={},
                load={},
                enrolled_at=now,
                cert_serial=f"{n:02x}",
                cert_not_before=now,
                cert_not_after=now + 86400,
            )
        )
    bodies = [(s, float(s), msgpack.packb({"n": s})) for s in range(1, 101)]
    await store.apply_uploads([Upload("dev-0", "results", 1, 100, bodies)], now=now)
    await store.create_tasks(
        [
            NewTask(
                f"tsk-{n:016x}", "m", "", msgpack.packb([[1]]), "int8", 5, now + 600, 60, {}, "t"
            )
            for n in range(5)
        ],
        now=now,
    )
    await store.put_policy_layer(
        Layer("fleet", "fleet", {}, None, 0, {"metrics_interval": 30}, now, "t")
    )
    await store.refresh_policies(None, now=now)
    for _ in range(3):
        _, principal = mint(
            load_token_key(paths), role="viewer", subject="v", ttl=60, kind="api-key"
        )
        await store.add_api_token(grant_record(principal))
    await store.audit(AuditEntry(now, "t", "admin", "PUT", "/x", "policy.put", 200, ""))
    # A model: its row in the database, its file on the hub's disk.
    folder = paths.models / "m" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(MODEL_BYTES)
    await store.add_model(
        StoredModel("m", "1.0.0", "00" * 32, len(MODEL_BYTES), {}, b"doc", b"sig", now, "t")
    )


async def _picture(store: HubStore) -> dict[str, object]:
    return {
        "devices": [(d.device_id, d.labels, d.cert_serial) for d in await store.devices()],
        "records": [
            (r.seq, r.body) for r in await store.records("dev-0", "results", after=0, limit=500)
        ],
        "tasks": await store.task_counts(),
        "layers": [(x.name, x.document) for x in await store.policy_layers()],
        "policy": [(p.version, p.document) for p in [await store.device_policy("dev-1")] if p],
        "tokens": [t.jti for t in await store.api_tokens(after=None, limit=10)],
        "audit": [(e.action, e.status) for e in await store.audit_log(before=None, limit=10)],
    }


def test_db_migrate_moves_a_sqlite_hub_whole_and_refuses_a_database_with_data(
    tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    paths = HubPaths(data)

    async def before() -> dict[str, object]:
        store = HubStore(paths.database)
        try:
            await _fill(store, paths)
            return await _picture(store)
        finally:
            store.close()

    expected = asyncio.run(before())
    moved = _run("db", "migrate", "--data", str(data), "--to", pg_url)
    again = _run("db", "migrate", "--data", str(data), "--to", pg_url)

    assert moved.returncode == 0, moved.stderr
    assert "records" in moved.stdout
    assert "(model files)" in moved.stdout
    assert again.returncode == 2
    assert "already holds data" in again.stderr
    assert "Traceback" not in again.stderr

    async def after() -> tuple[dict[str, object], int, int]:
        store = HubStore(pg_url)
        try:
            picture = await _picture(store)
            # New rows continue after the copied ones (the identity sequences moved on).
            await store.create_tasks(
                [
                    NewTask(
                        "tsk-new",
                        "m",
                        "",
                        b"\x91\x91\x01",
                        "int8",
                        5,
                        time.time() + 60,
                        60,
                        {},
                        "t",
                    )
                ],
                now=time.time(),
            )
            new = await store.task("tsk-new")
            assert new is not None
            # Any replica can serve the model: its file came along into the database.
            assert await store.model_file("m", "1.0.0") == MODEL_BYTES
            tokens = await store.api_tokens(after=None, limit=10)
            return picture, new.seq, len(tokens)
        finally:
            store.close()

    picture, seq, tokens = asyncio.run(after())
    assert picture == expected
    assert seq == 6
    assert tokens == 3
    assert len(expected["records"]) == 100  # type: ignore[arg-type]


def test_database_mistakes_are_one_line_naming_the_database(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0

    scheme = _run("run", "--data", str(data), "--db", "mysql://hub@127.0.0.1/hub")
    refused = _run(
        "init", "--data", str(tmp_path / "other"), "--db",
        "postgresql://outpost:s3cret@127.0.0.1:1/hub",
    )  # fmt: skip
    lone_replica = _run("run", "--data", str(data), "--replica-id", "r1")

    assert scheme.returncode == 2
    assert "unknown scheme 'mysql'" in scheme.stderr
    assert refused.returncode == 2
    assert "cannot use the database postgresql://outpost@127.0.0.1:1/hub" in refused.stderr
    assert "s3cret" not in refused.stderr + refused.stdout  # no password in what is printed
    assert not (tmp_path / "other").exists()  # nothing made for a database it cannot use
    assert lone_replica.returncode == 2
    assert "hub.replica_id" in lone_replica.stderr
    for done in (scheme, refused, lone_replica):
        assert "Traceback" not in done.stderr


def test_events_after_a_migrate_reach_a_sink_whose_delivered_events_were_pruned(
    tmp_path: Path, pg_url: str
) -> None:
    """Each sequence started after the ids of the rows copied, not after every id the
    SQLite hub gave: with the delivered events pruned from the outbox, new events were
    numbered 1.. again, below the sink's cursor, and never delivered."""
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    paths = HubPaths(data)

    async def before() -> int:
        store = HubStore(paths.database)
        store.publish_events()
        try:
            now = time.time()
            await store.run(
                outbox.emit_many, [("test", f"dev-{n}", {"n": n}, now) for n in range(5)]
            )
            cursor = await store.run(outbox.open_cursor, "bus", now)  # all 5 delivered
            assert await store.run(outbox.prune, ["bus"], 0.0, now + 1) == 5  # as upkeep does
            return cursor.position
        finally:
            store.close()

    assert asyncio.run(before()) == 5
    moved = _run("db", "migrate", "--data", str(data), "--to", pg_url)
    assert moved.returncode == 0, moved.stderr

    async def after() -> list[outbox.OutboxEvent]:
        store = HubStore(pg_url)
        store.publish_events()
        try:
            await store.run(outbox.emit_many, [("test", "dev-x", {"new": True}, time.time())])
            position = await store.run(outbox.position_of, "bus")
            assert position == 5
            return await store.run(outbox.after, position, 100)
        finally:
            store.close()

    assert [e.data for e in asyncio.run(after())] == [{"new": True}]


def test_agent_release_files_come_along_with_db_migrate(tmp_path: Path, pg_url: str) -> None:
    """Its rows moved, its files did not: every replica listed the release, and none but
    the one holding the old data folder could serve it to a device."""
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    paths = HubPaths(data)
    wheel = b"PK\x03\x04 a wheel" * 100
    folder = paths.agent_releases / "9.9.9"
    folder.mkdir(parents=True)
    (folder / "outpost-9.9.9-py3-none-any.whl").write_bytes(wheel)

    async def before() -> None:
        store = HubStore(paths.database)
        try:
            assert await store.run(
                registry.add,
                StoredAgentRelease("9.9.9", "{}", b"doc", b"sig", time.time(), "t"),
            )
        finally:
            store.close()

    asyncio.run(before())
    moved = _run("db", "migrate", "--data", str(data), "--to", pg_url)
    assert moved.returncode == 0, moved.stderr

    async def after() -> Path | None:
        # Another replica, with its own data folder: it serves the release from the database.
        other = HubPaths(tmp_path / "replica-b")
        other.root.mkdir()
        store = HubStore(pg_url)
        try:
            shelf = AgentShelf(other, store, ed25519.Ed25519PrivateKey.generate())
            assert [r.version for r in await shelf.releases()] == ["9.9.9"]
            return await shelf.local_file("9.9.9", "outpost-9.9.9-py3-none-any.whl")
        finally:
            store.close()

    served = asyncio.run(after())
    assert served is not None, "a listed agent release whose file no replica can serve"
    assert served.read_bytes() == wheel


def _tables_in(pg_url: str) -> list[str]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return [r[0] for r in rows]


def _older_hub_database(path: Path, *, behind: int, then: list[str]) -> Path:
    """A hub database at `path` with all but its last `behind` migrations, and the
    statements `then` run in it."""
    path.parent.mkdir()
    db = open_database(path, synchronous="FULL")
    try:
        migrate_sqlite(SqliteSql(db.conn), MIGRATIONS[:-behind])
        for statement in then:
            db.conn.execute(statement)
        db.conn.commit()
    finally:
        db.conn.close()
    return path


def _beside(path: Path) -> list[str]:
    """What lies in `path`'s folder beside it (SQLite's -wal, -shm or -journal files)."""
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def test_db_migrate_refuses_a_source_that_is_no_hub_database_and_leaves_it_as_it_was(
    tmp_path: Path, pg_url: str
) -> None:
    """The source was opened as a hub opens its database: an empty file or another
    program's SQLite file was made into a hub database (300 KB, -wal and -shm beside
    it), 0 rows were copied, and the command said it had migrated."""
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    empty = tmp_path / "empty" / "empty.db"
    text = tmp_path / "text" / "notes.db"
    other = tmp_path / "other" / "other.db"
    for path in (empty, text, other):
        path.parent.mkdir()
    empty.write_bytes(b"")
    text.write_bytes(b"not a database at all\n" * 50)
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = [
        (empty, str(empty), "is empty"),
        (text, f"sqlite:{text}", "is not a SQLite database"),
        (other, str(other), "is not a hub's database"),
    ]

    for source, given, said in cases:
        before = source.read_bytes()
        refused = _run("db", "migrate", "--data", str(data), "--from", given, "--to", pg_url)

        assert refused.returncode == 2, (given, refused.stdout, refused.stderr)
        assert said in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert source.read_bytes() == before  # not made into a hub database
        assert _beside(source) == []  # no -wal, -shm or -journal left beside it
    in_folder = _run("db", "migrate", "--data", str(data), "--from", f"sqlite:{folder}",
                     "--to", pg_url)  # fmt: skip
    assert in_folder.returncode == 2
    assert f"{folder} is a folder" in in_folder.stderr
    assert list(folder.iterdir()) == []
    assert _tables_in(pg_url) == []  # the target was never touched: no schema made


def test_db_migrate_copies_an_older_hubs_database_and_leaves_it_unchanged(
    tmp_path: Path, pg_url: str
) -> None:
    """A hub database some migrations behind is brought up to date in a copy: its data
    arrives in PostgreSQL, the file itself is not written (it was migrated in place)."""
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    old = _older_hub_database(
        tmp_path / "old" / "hub.db",
        behind=2,
        then=[
            "INSERT INTO audit (at, subject, role, method, path, action, status, detail)"
            " VALUES (1.0, 'alice', 'admin', 'PUT', '/x', 'policy.put', 200, '')"
        ],
    )
    before = hashlib.sha256(old.read_bytes()).hexdigest()

    moved = _run("db", "migrate", "--data", str(data), "--from", str(old), "--to", pg_url)

    assert moved.returncode == 0, moved.stderr
    assert hashlib.sha256(old.read_bytes()).hexdigest() == before
    with contextlib.closing(sqlite3.connect(f"{old.as_uri()}?mode=ro", uri=True)) as conn:
        (applied,) = conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()
    assert applied == len(MIGRATIONS) - 2
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT subject, action FROM audit").fetchall()
    assert rows == [("alice", "policy.put")]


def test_db_migrate_says_when_the_temp_folder_fills_up_and_leaves_no_copy_there(
    tmp_path: Path,
) -> None:
    """An older hub's database is copied into TMPDIR (often a small tmpfs) to be brought
    up to date: a temp disk that fills up is said in words, naming the folder and TMPDIR,
    not a traceback of sqlite3's "disk I/O error". A file-size limit of 1 MB on the
    command stands in for a temp disk with 1 MB free (its check of the free room sees
    the real disk, so the copy is tried)."""
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    old = _older_hub_database(
        tmp_path / "old" / "hub.db",
        behind=1,
        then=["CREATE TABLE filler (b BLOB)"]
        + ["INSERT INTO filler VALUES (randomblob(100000))"] * 30,
    )
    before = hashlib.sha256(old.read_bytes()).hexdigest()
    temp = tmp_path / "tmp"
    temp.mkdir()

    moved = subprocess.run(
        ["bash", "-c", 'ulimit -f 1024 && exec "$@"', "-", sys.executable, "-m", "hub.cli",
         "db", "migrate", "--data", str(data), "--from", str(old),
         "--to", "postgresql://u:pw@127.0.0.1:1/hub"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
        env={**os.environ, "TMPDIR": str(temp)},
    )  # fmt: skip

    assert moved.returncode == 2, moved.stderr
    assert "Traceback" not in moved.stderr
    assert f"a temporary copy in {temp}, and that copy failed" in moved.stderr
    assert "set TMPDIR to a folder with room" in moved.stderr
    assert list(temp.iterdir()) == []
    assert hashlib.sha256(old.read_bytes()).hexdigest() == before


def test_init_with_a_database_refuses_the_folder_before_touching_the_database(
    tmp_path: Path, pg_url: str
) -> None:
    """An initialised folder, or a file, was refused only after `--db` had made every
    table in PostgreSQL, left behind in a database no hub uses."""
    data = tmp_path / "hub"
    assert _run("init", "--data", str(data)).returncode == 0
    a_file = tmp_path / "afile"
    a_file.write_text("mine\n")

    again = _run("init", "--data", str(data), "--db", pg_url)
    on_file = _run("init", "--data", str(a_file), "--db", pg_url)

    assert again.returncode == 2
    assert "already initialised" in again.stderr
    assert on_file.returncode == 2
    assert "is a file, not a folder" in on_file.stderr
    for done in (again, on_file):
        assert "Traceback" not in done.stderr
    assert _tables_in(pg_url) == []
    assert a_file.read_text() == "mine\n"
    assert not (data / "hub.toml").exists()  # no db_url written into the initialised one
