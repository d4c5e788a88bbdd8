"""`outpost-hub init --db`, `db migrate` and `--db` as an operator meets them: a hub made
on PostgreSQL, a SQLite hub's data moved over whole, and clear refusals."""

from __future__ import annotations

import asyncio
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
from outpost.modelbundle import MODEL_FILE
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
