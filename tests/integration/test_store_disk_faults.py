"""Disk faults under the agent store: a full disk and I/O errors, once and persistently.

Three ways in. SQLite's page limit (`PRAGMA max_page_count`) makes the store itself full,
anywhere. A real small file system (a tmpfs mounted for the test, root only) gives the
kernel's own error: a filler file takes the last bytes (ENOSPC). I/O errors come from a
file-size limit set on the agent's pid (every write fails with EFBIG, which SQLite reports
as a disk I/O error; a read-only remount is refused while the store is open). Each time:
the append is refused with a reason, nothing is corrupted, the agent stays up, and writes
resume once the disk does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge.identity import DevicePaths
from edge.store import AgentStore, Bounds, StoreWriteError
from hub.app import Hub
from tests import disks
from tests.conftest import Enroller
from tests.integration.test_store_forward import hub_records, wait_socket
from tests.local_api import LocalClient
from tests.support import AgentProcess, eventually

BOUNDS = {s: Bounds(0, 0, 0) for s in ("results", "events", "metrics")}


def _verdict(path: Path) -> tuple[str, set[str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
        ids = {row[0] for row in db.execute("SELECT body FROM records").fetchall()}
    return verdict, {i.hex() if isinstance(i, bytes) else str(i) for i in ids}


async def _fill(store: AgentStore, confirmed: list[int]) -> StoreWriteError:
    """Append until the store refuses; return the refusal."""
    for _ in range(10_000):
        try:
            done = await store.append("results", [{"pad": "x" * 2000}] * 5)
        except StoreWriteError as exc:
            return exc
        confirmed.extend(range(done.first_seq, done.last_seq + 1))
    raise AssertionError("the page limit never filled the store")


def _seqs(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT seq FROM records WHERE stream = 'results'")}


async def test_page_limit_full_refuses_with_reason_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = AgentStore(path, BOUNDS)
    await store.start()
    confirmed: list[int] = []
    try:
        (pages,) = await store._db.run(lambda db: db.execute("PRAGMA page_count").fetchone())
        await store._db.run(lambda db: db.execute(f"PRAGMA max_page_count = {pages + 20}"))

        # Failing persistently: every append is refused, each with the reason.
        first = await _fill(store, confirmed)
        again = [await _fill(store, confirmed) for _ in range(3)]
        assert first.disk_full
        assert all(e.disk_full for e in again)
        assert "database or disk is full" in first.reason
        assert "nothing of this append was stored" in first.reason

        # Space returns: writes resume, numbered after the last confirmed.
        await store._db.run(lambda db: db.execute(f"PRAGMA max_page_count = {pages + 400}"))
        done = await store.append("results", [{"after": True}])
        assert done.first_seq == confirmed[-1] + 1

        # Failing once: full again, then a little room, and the next append goes in.
        await _fill(store, confirmed)
        (now,) = await store._db.run(lambda db: db.execute("PRAGMA page_count").fetchone())
        await store._db.run(lambda db: db.execute(f"PRAGMA max_page_count = {now + 5}"))
        await store.append("results", [{"once": True}])
        confirmed.append(done.first_seq)
    finally:
        await store.close()
    verdict, _ = _verdict(path)
    assert verdict == "ok"
    assert set(confirmed) <= _seqs(path)


# ------------------------------------------------------------- a real small disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for the test."""
    with disks.small_disk(tmp_path / "disk", "16m") as mount:
        yield mount


def _fill_disk(mount: Path) -> Path:
    """Take every free byte of the file system with one file."""
    filler = mount / "filler"
    # Unbuffered: a buffered file's close flushes what its last write left, and fails
    # again with ENOSPC outside the suppress (whenever the free space is no multiple of
    # the write).
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def _file_size_limit(pid: int, limit: int) -> None:
    """Cap the size of files the process may write (RLIMIT_FSIZE): a write past it fails
    with EFBIG, which SQLite reports as a disk I/O error. Python ignores SIGXFSZ, so the
    process lives on. By pid, from outside, as a failing disk would look to it."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


async def _post(client: LocalClient, confirmed: set[str]) -> tuple[int, object]:
    batch = [{"id": uuid.uuid4().hex, "pad": "y" * 4000} for _ in range(20)]
    status, body = await client.append("results", batch)
    if status == 201:
        confirmed.update(r["id"] for r in batch)
    return status, body


async def _until_refused(client: LocalClient, confirmed: set[str]) -> tuple[int, object]:
    for _ in range(2000):
        status, body = await _post(client, confirmed)
        if status != 201:
            return status, body
    raise AssertionError("the disk never filled")


@pytest.mark.slow
@pytest.mark.parametrize("draining", [False, True], ids=["offline", "draining"])
async def test_a_full_and_a_failing_disk_refuse_with_reason_and_recover(
    hub: Hub, enroll_device: Enroller, small_disk: Path, tmp_path: Path, draining: bool
) -> None:
    """Offline, only appends write; draining, the hub's acks must delete on the same
    full disk too (a failure there once stopped the agent: a crash loop)."""
    assert hub.parts.broker is not None
    enrolled, identity = await enroll_device()
    # The device folder moves onto the small disk.
    if not draining:
        await hub.parts.broker.stop()
    root = small_disk / "device"
    shutil.copytree(enrolled.root, root, symlinks=True)
    paths = DevicePaths(root)
    agent = AgentProcess(root, heartbeat_interval=0.5, log=tmp_path / "disk-agent.log")
    confirmed: set[str] = set()
    try:
        client = await wait_socket(paths, agent)
        assert (await _post(client, confirmed))[0] == 201

        # Disk full, persistently: refused with 507 and the reason, again and again.
        filler = _fill_disk(small_disk)
        status, body = await _until_refused(client, confirmed)
        assert status == 507, body
        assert isinstance(body, dict), body
        assert body["error"]["code"] == "disk_full", body
        assert "disk is full" in body["error"]["message"]
        for _ in range(5):
            assert (await _post(client, confirmed))[0] == 507
        assert agent.process.poll() is None, "the agent died of a full disk"
        assert (await client.status())["store"]["streams"]

        # Space returns (failing once): the next append is stored.
        filler.unlink()
        assert (await _post(client, confirmed))[0] == 201

        # I/O errors, persistently: every write fails until the disk is writable again.
        _file_size_limit(agent.process.pid, 1)
        try:
            status, body = await _post(client, confirmed)
            assert status == 503, body
            assert isinstance(body, dict)
            assert body["error"]["code"] == "store_unavailable"
            assert "could not write (disk I/O error)" in body["error"]["message"]
            for _ in range(3):
                assert (await _post(client, confirmed))[0] == 503
            assert agent.process.poll() is None, "the agent died of an I/O error"
        finally:
            _file_size_limit(agent.process.pid, resource.RLIM_INFINITY)
        status, body = await _post(client, confirmed)
        assert status == 201, body
        await client.close()
        if draining:

            async def drained() -> bool:
                held = {b.get("id") for _, b in hub_records(hub, identity.device_id)}
                return confirmed <= held

            await eventually(drained, timeout=30, what="every confirmed record at the hub")
        assert agent.process.poll() is None, "the agent stopped"
    except aiohttp.ClientError as exc:
        # A dying agent's last words: wait (bounded) for it to exit, if it is exiting.
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(agent.process.wait, 5)
        raise AssertionError(
            f"the agent's local API went away (exit code {agent.process.poll()}): "
            + agent.output()[-4000:]
        ) from exc
    finally:
        agent.stop()

    with contextlib.closing(sqlite3.connect(paths.root / "store.db")) as db:
        (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
    assert verdict == "ok"
    # Every confirmed record is in the store or at the hub.
    restarted = AgentStore(paths.root / "store.db", BOUNDS)
    await restarted.start()
    try:
        held = await restarted.batch("results", 0, max_records=100_000, max_bytes=1 << 30)
    finally:
        await restarted.close()
    at_hub = {b.get("id") for _, b in hub_records(hub, identity.device_id)}
    assert confirmed <= {body["id"] for _, _, body in held if "id" in body} | at_hub
    assert os.path.exists(paths.root / "store.db")
