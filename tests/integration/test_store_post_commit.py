"""A failure after a group of appends committed (here the sync thread cannot start, as
under systemd's TasksMax) is not taken as a failed commit: the group is not committed a
second time under new numbers, its producers are answered, its records still reach the
disk and the uploader, and the store closes cleanly."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from edge.store import STREAMS, AgentStore, Bounds
from tests.support import eventually

UNBOUNDED = {s: Bounds(0, 0, 0) for s in STREAMS}
TIMEOUT_S = 30.0  # generous: a slow machine, not a hang


@pytest.fixture
def no_sync_thread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store's sync thread cannot be started (the process is out of threads)."""
    real_start = threading.Thread.start
    refused: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name == "agent-store-sync":
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return refused


async def test_a_group_is_stored_once_when_its_sync_thread_cannot_start(
    tmp_path: Path, no_sync_thread: list[str]
) -> None:
    store = AgentStore(tmp_path / "store.db", UNBOUNDED)
    await store.start()
    try:
        appended = await asyncio.wait_for(
            asyncio.gather(
                *(store.append("results", [{"n": n}], confirm="written") for n in range(3))
            ),
            TIMEOUT_S,
        )

        async def readable() -> bool:
            return store.readable_through("results") >= 3

        await eventually(readable, timeout=TIMEOUT_S, what="the records synced")
        rows = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
        cursors = await store.cursors()
    finally:
        await asyncio.wait_for(store.close(), TIMEOUT_S)  # no thread to join: no error
    assert no_sync_thread, "the fault was injected"
    assert sorted(a.first_seq for a in appended) == [1, 2, 3]
    assert [(seq, body["n"]) for seq, _, body in rows] == [(1, 0), (2, 1), (3, 2)]
    assert cursors["results"] == (0, 3), "three appends, three records"


async def test_any_failure_after_the_commit_does_not_store_the_group_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AgentStore(tmp_path / "store.db", UNBOUNDED)
    await store.start()
    real_unsynced = store._durable.unsynced
    failures: list[int] = []

    def failing_unsynced(*args: object, **kwargs: object) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("bookkeeping failed after the commit")
        real_unsynced(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store._durable, "unsynced", failing_unsynced)
    try:
        appended = await asyncio.wait_for(
            asyncio.gather(
                *(store.append("results", [{"n": n}], confirm="written") for n in range(3))
            ),
            TIMEOUT_S,
        )
        # The next synced commit takes every earlier one to the disk with it.
        await asyncio.wait_for(store.append("results", [{"n": 3}]), TIMEOUT_S)
        rows = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
    finally:
        await asyncio.wait_for(store.close(), TIMEOUT_S)
    assert failures, "the fault was injected"
    assert sorted(a.first_seq for a in appended) == [1, 2, 3]
    assert [(seq, body["n"]) for seq, _, body in rows] == [(1, 0), (2, 1), (3, 2), (4, 3)]
