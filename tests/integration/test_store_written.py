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
import time
from pathlib import Path

import pytest

import edge.store.durable
from edge.store import STREAMS, AgentStore, Bounds, confirmed
from edge.store.errors import AppendDeclined
from edge.store.inbox import InboxTask
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


async def test_a_commit_that_writes_nothing_takes_nothing_to_the_disk(
    tmp_path: Path, held: HeldSync
) -> None:
    """A synced commit takes every commit before it to the disk, as SQLite syncs its log
    with it; one that wrote nothing (a stream aligned already, an append declined) adds
    nothing to the log, and SQLite syncs nothing: a written record stays unsent."""
    path = tmp_path / "store.db"
    store = AgentStore(path, UNBOUNDED)
    await store.start()
    try:
        await store.align("results", 0)  # aligns: a write, synced by SQLite
        written = await store.append("results", [{"n": 1}], confirm="written")
        await store.align("results", 0)  # aligned already: writes nothing
        with pytest.raises(AppendDeclined):
            await store.append("events", [{"x": 1}], first=lambda db: False)
        assert await _records(store) == []
        assert _last_marked(path) == 0, "the mark ran ahead of the disk"
        held.release()
        await _until_records(store, [written.first_seq])
        assert held.done == [f"{path}-wal"]
    finally:
        held.release()
        await store.close()


def _task(task_id: str) -> InboxTask:
    return InboxTask(
        task_id=task_id,
        attempt=1,
        model="m",
        version="",
        input=[0],
        dtype="int8",
        priority=0,
        deadline=time.time() + 60,
        lease_until=time.time() + 60,
    )


async def test_an_inbox_put_answered_once_written_reaches_the_disk_with_the_next_synced_commit(
    tmp_path: Path, held: HeldSync
) -> None:
    """A task that starts at once goes into the inbox without a sync of its own: its
    result's synced commit takes the put to the disk with it, and only then is the put
    said to be there (the hub hears of the task after that)."""
    store = AgentStore(tmp_path / "store.db", UNBOUNDED)
    await store.start()
    try:
        outcomes, on_disk = await asyncio.wait_for(
            store.inbox.put_written([_task("t-1")], capacity=10, start=1), DEADLINE_S
        )
        assert outcomes == ["started"]
        await asyncio.to_thread(held.entered.wait, DEADLINE_S)  # its sync is held
        assert not on_disk.done(), "said to be on the disk before any sync"
        await asyncio.wait_for(store.append("results", [{"task": "t-1"}]), DEADLINE_S)
        await asyncio.wait_for(on_disk, DEADLINE_S)
        assert held.done == [], "the put waited for its own sync"
    finally:
        held.release()
        await store.close()


async def test_an_inbox_put_alone_reaches_the_disk_with_the_sync_that_follows(
    tmp_path: Path, held: HeldSync
) -> None:
    store = AgentStore(tmp_path / "store.db", UNBOUNDED)
    await store.start()
    try:
        _, on_disk = await store.inbox.put_written([_task("t-1")], capacity=10, start=1)
        await asyncio.to_thread(held.entered.wait, DEADLINE_S)
        assert not on_disk.done()
        held.release()
        await asyncio.wait_for(on_disk, DEADLINE_S)
        assert held.done == [f"{tmp_path / 'store.db'}-wal"]
    finally:
        held.release()
        await store.close()


def test_the_sync_thread_skips_a_commit_a_synced_one_took_to_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second sync of what is on the disk already costs a device a flash write."""
    synced: list[str] = []
    monkeypatch.setattr(edge.store.durable, "sync_file", synced.append)
    marks = confirmed.MarkFile(tmp_path / "store.db.confirmed")
    numbering = {s: confirmed.Mark(0, 0) for s in STREAMS}
    durable = edge.store.durable.Durability(
        str(tmp_path / "store.db-wal"), marks, numbering, lambda: None, delay_s=DEADLINE_S
    )
    durable.unsynced(1, numbering)  # waits DEADLINE_S for more before syncing
    durable.synced(2, numbering)  # a synced commit after it took it along
    durable.close()  # cuts the wait short: the pending one is already on the disk
    marks.close()

    assert synced == []

    again = confirmed.MarkFile(tmp_path / "store.db.confirmed")
    durable = edge.store.durable.Durability(
        str(tmp_path / "store.db-wal"), again, numbering, lambda: None, delay_s=DEADLINE_S
    )
    durable.unsynced(1, numbering)
    durable.close()  # nothing took it: synced at the close
    again.close()

    assert synced == [str(tmp_path / "store.db-wal")]


def test_a_lazy_commit_waits_its_own_delay_and_a_sooner_one_takes_it_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acknowledgement's commit is synced within a second, not 10 ms (its loss only
    sends records again): until then, a commit that must be on the disk sooner (an
    answer's record) takes it along with its own sync."""
    synced = threading.Event()
    monkeypatch.setattr(edge.store.durable, "sync_file", lambda path: synced.set())
    marks = confirmed.MarkFile(tmp_path / "store.db.confirmed")
    numbering = {s: confirmed.Mark(0, 0) for s in STREAMS}
    durable = edge.store.durable.Durability(
        str(tmp_path / "store.db-wal"), marks, numbering, lambda: None, delay_s=0.0
    )
    try:
        durable.unsynced(1, numbering, within_s=3600.0)  # longer than any wait below
        # The thread gathers for the lazy one's delay: no sync in a while. (A bounded
        # wait that should time out: the proof of "not yet" a test can give.)
        assert not synced.wait(0.2)
        assert durable.limit("results") == 0
        later = {**numbering, "results": confirmed.Mark(1, 0)}
        durable.unsynced(2, later)  # due at once: the thread wakes and syncs both
        assert synced.wait(DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while durable.limit("results") != 1:  # settled just after the sync returns
            assert time.monotonic() < deadline
            time.sleep(0.001)  # a poll with a deadline
    finally:
        durable.close()
        marks.close()


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


def test_a_failed_sync_is_tried_again_with_no_later_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that failed (EIO) dropped its commit: on an idle device nothing synced it
    again, and what waited for it (a task's "accepted") waited for ever. It is tried
    again in a second; a close while it keeps failing still ends."""
    calls: list[str] = []

    def failing_twice(path: str) -> None:
        calls.append(path)
        if len(calls) <= 2:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(edge.store.durable, "sync_file", failing_twice)
    monkeypatch.setattr(edge.store.durable, "SYNC_RETRY_S", 0.05)
    marks = confirmed.MarkFile(tmp_path / "store.db.confirmed")
    numbering = {s: confirmed.Mark(0, 0) for s in STREAMS}
    durable = edge.store.durable.Durability(
        str(tmp_path / "store.db-wal"), marks, numbering, lambda: None, delay_s=0.0
    )
    try:
        durable.unsynced(1, {**numbering, "results": confirmed.Mark(1, 0)})  # and no more
        deadline = time.monotonic() + DEADLINE_S
        while durable.limit("results") != 1:
            assert time.monotonic() < deadline, f"not settled after {len(calls)} syncs"
            time.sleep(0.001)  # a poll with a deadline
        assert len(calls) == 3
    finally:
        durable.close()
        marks.close()

    def failing(path: str) -> None:
        calls.append(path)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(edge.store.durable, "sync_file", failing)
    again = confirmed.MarkFile(tmp_path / "store.db.confirmed")
    durable = edge.store.durable.Durability(
        str(tmp_path / "store.db-wal"), again, numbering, lambda: None, delay_s=3600.0
    )
    durable.unsynced(2, numbering)
    durable.close()  # its one try at the close fails: it ends all the same
    again.close()
    assert len(calls) == 4
