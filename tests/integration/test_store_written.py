"""Appends answered once `written` (a recorded inference's answer): the producer is told
after the commit, before the disk's sync, and the next commit does not wait for that
sync either; the records survive a `kill -9` from that moment on, and nothing else sees
them (the uploader's reads, the confirmed mark) until the sync has run. An append that
waits for the disk (`synced`, the default, as the local API's records route promises)
is still answered only after it.

The sync (on the store's sync thread) is replaced by one held on a gate, so "before the
sync" is a fact the test controls rather than a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import edge.store.durable
from edge.store import STREAMS, AgentStore, Bounds, confirmed
from tests.support import REPO

UNBOUNDED = {s: Bounds(0, 0, 0) for s in STREAMS}
DEADLINE_S = 30.0  # a hang here is a failure, not a wait


class HeldSync:
    """The store's file sync, held until `release`; it logs each sync it completes."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.done: list[str] = []

    def __call__(self, path: str) -> None:
        self.entered.set()
        self.gate.wait()
        self.done.append(path)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldSync:
    sync = HeldSync()
    monkeypatch.setattr(edge.store.durable, "sync_file", sync)
    return sync


async def _records(store: AgentStore) -> list[int]:
    rows = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
    return [seq for seq, _, _ in rows]


async def _until_records(store: AgentStore, expected: list[int]) -> None:
    """Wait until the uploader would read `expected` (woken as it is, by `appended`)."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            store.appended.clear()
            if await _records(store) == expected:
                return
            await store.appended.wait()


def _last_marked(path: Path) -> int:
    marks = confirmed.read(confirmed.path_for(path))
    assert marks is not None
    return marks["results"].last


async def test_a_written_append_is_answered_before_the_sync_and_sent_only_after_it(
    tmp_path: Path, held: HeldSync
) -> None:
    path = tmp_path / "store.db"
    store = AgentStore(path, UNBOUNDED)
    await store.start()
    try:
        first = await asyncio.wait_for(
            store.append("results", [{"n": 1}], confirm="written"), DEADLINE_S
        )
        assert first.first_seq == 1
        await asyncio.to_thread(held.entered.wait, DEADLINE_S)
        # The next commit does not wait behind the sync either.
        second = await asyncio.wait_for(
            store.append("results", [{"n": 2}], confirm="written"), DEADLINE_S
        )
        assert second.first_seq == 2
        assert held.done == [], "the producers waited for the sync"
        # Not on the disk yet: nothing for the uploader, and the mark has not moved.
        assert await _records(store) == []
        assert _last_marked(path) == 0, "the mark ran ahead of the disk"
        held.release()
        await _until_records(store, [1, 2])
        assert held.done[0] == f"{path}-wal"
        assert _last_marked(path) == 2
    finally:
        held.release()
        await store.close()


async def test_a_synced_append_waits_for_sqlites_own_sync(tmp_path: Path, held: HeldSync) -> None:
    # The default (what the local API's records route promises) commits with
    # synchronous=FULL: SQLite syncs before the commit returns, never the held sync.
    store = AgentStore(tmp_path / "store.db", UNBOUNDED)
    await store.start()
    try:
        alone = await asyncio.wait_for(store.append("results", [{"n": 1}]), DEADLINE_S)
        # Queued together, a written and a synced append share one commit: it is synced.
        written = asyncio.create_task(store.append("results", [{"n": 2}], confirm="written"))
        synced = asyncio.create_task(store.append("results", [{"n": 3}]))
        grouped = await asyncio.wait_for(asyncio.gather(written, synced), DEADLINE_S)
        assert [alone.first_seq] + [a.first_seq for a in grouped] == [1, 2, 3]
        assert not held.entered.is_set(), "a synced commit took the unsynced path"
    finally:
        held.release()
        await store.close()


_WRITER = r"""
import asyncio, sys, threading
from pathlib import Path
import edge.store.durable
from edge.store import AgentStore, Bounds

edge.store.durable.sync_file = lambda path: threading.Event().wait()  # a disk that never syncs

async def main():
    bounds = {s: Bounds(0, 0, 0) for s in ("results", "events", "metrics")}
    store = AgentStore(Path(sys.argv[1]), bounds)
    await store.start()
    done = await store.append("results", [{"n": "answered"}], confirm="written")
    print("ok", done.first_seq, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


async def test_a_written_record_survives_kill_9_before_its_sync(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    assert writer.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(writer.stdout.readline), DEADLINE_S)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(DEADLINE_S)
    assert line.split() == ["ok", "1"]
    assert _last_marked(path) == 0, "the mark named a number the disk may not hold"

    store = AgentStore(path, UNBOUNDED)
    await store.start()
    try:
        rows = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
        after = await store.append("results", [{"n": "after"}])
    finally:
        await store.close()
    assert store.set_aside is None, "the store was taken for damaged"
    assert [(seq, body) for seq, _, body in rows] == [(1, {"n": "answered"})]
    assert after.first_seq == 2, "a number was given twice"
