"""One device's upload cannot keep another's from being stored and acked.

Uploads of many devices share one transaction at the hub. A value one back-end cannot
bind (a number past 64 bits, a NUL character, which PostgreSQL's text refuses) used to
fail that transaction for every device in it, again at each resend. The store now reads
such values as a malformed result, a roll-up's unreadable model, or a stale update; and
should anything else in one device's upload fail the SQL, the ingest stores each
device's uploads apart. On both back-ends.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hub.mqtt.acks import AckSet
from hub.mqtt.ingest import Ingest
from hub.store import HeartbeatSeen, HelloSeen, HubStore, NewTask, TaskSettings, Upload
from hub.tasks.allocation import plan
from outpost import rollup, wire
from tests.databases import BACKENDS, database

SETTINGS = TaskSettings(
    accept_timeout_s=10, max_attempts=3, prefetch=0, stale_after_heartbeats=3, max_plan=100
)
READY = [{"name": "m", "version": "1", "sha256": "", "state": "ready", "error": ""}]
TASK = "tsk-0000000000000001"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def _online(store: HubStore, *device_ids: str) -> None:
    now = time.time()
    for device_id in device_ids:
        await store.record_presence(
            [
                HelloSeen(device_id, "c", now, "generic", "1", 1.0, {}, "rt", READY, 1),
                HeartbeatSeen(device_id, "c", now, 1.0, {"cpu_percent": 5.0}),
            ]
        )


async def _assigned(store: HubStore) -> Any:
    """The task, given to one of the online devices."""
    task = NewTask(TASK, "m", "", msgpack.packb([[1]]), "int8", 5, time.time() + 600, 60, {}, "t")
    await store.create_tasks([task], now=time.time())
    (assigned,) = (await store.allocate(now=time.time(), settings=SETTINGS, plan=plan))[0]
    return assigned


POISON: dict[str, Callable[[Any], dict[str, Any]]] = {
    "a task id with a NUL": lambda a: {"kind": "task", "task_id": "tsk-\x00", "attempt": 1},
    "an attempt past 64 bits": lambda a: {
        "kind": "task",
        "task_id": a.task_id,
        "attempt": 2**63,
        "status": "succeeded",
    },
    "a latency past 64 bits": lambda a: {
        "kind": "task",
        "task_id": a.task_id,
        "attempt": a.attempt,
        "status": "succeeded",
        "latency_ms": 2**64 - 1,
    },
    "an error text with a NUL": lambda a: {
        "kind": "task",
        "task_id": a.task_id,
        "attempt": a.attempt,
        "status": "failed",
        "error": "bad\x00input",
    },
    "a roll-up's model named with a NUL": lambda a: {
        "kind": rollup.KIND,
        "models": {"m\x00x@1": {"count": 1}},
        "shadow": {"m\x00x@2": {"live": "1"}},
    },
}


@pytest.mark.parametrize("poison", POISON)
async def test_a_value_a_back_end_cannot_bind_is_read_as_malformed_and_fails_no_one_else(
    store: HubStore, poison: str
) -> None:
    await _online(store, "dev-a", "dev-b")
    assigned = await _assigned(store)
    other = "dev-a" if assigned.device_id == "dev-b" else "dev-b"
    body = POISON[poison](assigned)
    stream = "metrics" if body["kind"] == rollup.KIND else "results"
    innocent = Upload(other, "events", 1, 1, [(1, time.time(), msgpack.packb({"ok": 1}))])
    odd = Upload(assigned.device_id, stream, 1, 1, [(1, time.time(), msgpack.packb(body))])

    outcome = await store.apply_uploads([innocent, odd], now=time.time())

    assert [(a.device_id, a.hwm) for a in outcome.applied] == [(other, 1), (assigned.device_id, 1)]
    marks = await store.stream_marks([other, assigned.device_id])
    assert (marks[(other, "events")], marks[(assigned.device_id, stream)]) == (1, 1)
    task = await store.task(TASK)
    assert task is not None
    if poison == "an error text with a NUL":  # taken, the character replaced
        assert (task.state, task.error) == ("failed", "bad\ufffdinput")
    else:
        assert task.state in ("assigned", "accepted")
        assert outcome.task_results.get("accepted", 0) == 0


async def test_a_task_update_naming_a_task_with_a_nul_is_stale_and_the_others_apply(
    store: HubStore,
) -> None:
    await _online(store, "dev-a", "dev-b")
    assigned = await _assigned(store)
    other = "dev-a" if assigned.device_id == "dev-b" else "dev-b"
    good = wire.TaskUpdate(task_id=TASK, attempt=assigned.attempt, state="accepted")
    odd = wire.TaskUpdate(task_id="tsk-\x00", attempt=1, state="rejected", reason="x\x00")

    applied = await store.task_updates_many(
        [(other, [odd]), (assigned.device_id, [good])], now=time.time(), settings=SETTINGS
    )

    assert applied == [[("tsk-\x00", "stale")], [(TASK, "applied")]]
    task = await store.task(TASK)
    assert task is not None
    assert task.state == "accepted"


def _records(stream: wire.Stream, body: dict[str, Any]) -> wire.Records:
    return wire.Records(
        stream=stream,
        from_seq=1,
        to_seq=1,
        seqs=[1],
        ts=[time.time()],
        bodies=[msgpack.packb(body)],
    )


@pytest.mark.parametrize(
    ("failure", "stored_apart"),
    [(ValueError("a value the store did not foresee"), True), (sqlite3.OperationalError(), False)],
)
async def test_a_device_whose_upload_fails_the_sql_leaves_the_others_stored_and_acked(
    store: HubStore, monkeypatch: pytest.MonkeyPatch, failure: Exception, stored_apart: bool
) -> None:
    """Uploads are stored device by device when the values of one failed the shared
    transaction; not when the database itself failed, which every retry would meet."""
    apply_uploads = store.apply_uploads
    calls: list[list[str]] = []

    async def failing_with_dev_bad(uploads: list[Upload], *, now: float) -> Any:
        calls.append([u.device_id for u in uploads])
        if any(u.device_id == "dev-bad" for u in uploads):
            raise failure
        return await apply_uploads(uploads, now=now)

    monkeypatch.setattr(store, "apply_uploads", failing_with_dev_bad)
    ingest = Ingest(store, max_payload_bytes=wire.MAX_PAYLOAD_BYTES)
    uploads = [
        ("dev-a", _records("events", {"n": 1}), "records"),
        ("dev-bad", _records("events", {"n": 2}), "records"),
        ("dev-c", _records("events", {"n": 3}), "records"),
    ]
    acks = AckSet()

    await ingest._store_uploads(uploads, time.time(), acks)

    marks = await store.stream_marks(["dev-a", "dev-bad", "dev-c"])
    acked = sorted({topic.split("/")[-3] for topic, _ in acks.messages()})  # .../ID/down/ack
    if stored_apart:
        assert calls == [["dev-a", "dev-bad", "dev-c"], ["dev-a"], ["dev-bad"], ["dev-c"]]
        assert (marks.get(("dev-a", "events")), marks.get(("dev-c", "events"))) == (1, 1)
        assert acked == ["dev-a", "dev-c"]
    else:
        assert calls == [["dev-a", "dev-bad", "dev-c"]]
        assert acked == []
    assert ("dev-bad", "events") not in marks


async def test_presence_the_database_cannot_take_is_not_tried_again_one_by_one(
    tmp_path: Path,
) -> None:
    """A locked (or down) database failed the presence batch, and the ingest then tried
    each heartbeat alone: each waited the whole busy timeout again, with a traceback
    each, while every other device's acks waited behind them."""
    path = tmp_path / "hub.db"
    store = HubStore(path, busy_timeout_ms=200)
    calls = 0
    record = store.record_presence

    async def counted(events: Any) -> list[bool]:
        nonlocal calls
        calls += 1
        return await record(events)

    store.record_presence = counted  # type: ignore[method-assign]
    ingest = Ingest(store, max_payload_bytes=1 << 20)
    beats = [_beat(f"dev-{n:012x}") for n in range(10)]
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the database
        await ingest.handle_batch(beats)
        locker.execute("ROLLBACK")
        assert calls == 1
        assert ingest.outcomes[("heartbeat", "error")] == 10
        # The control: with the database free again, the same beats are stored.
        await ingest.handle_batch(beats)
        assert ingest.outcomes[("heartbeat", "accepted")] == 10
    finally:
        locker.close()
        store.close()


def _beat(device_id: str) -> tuple[str, bytes]:
    load = wire.Load(cpu_percent=1, memory_percent=1, disk_percent=1, rss_bytes=1)
    body = wire.Heartbeat(conn="c", uptime_s=1.0, heartbeat_interval=10.0, load=load)
    return wire.up_topic(device_id, "heartbeat"), wire.encode("heartbeat", body)
