"""Records the hub could never take: refused by the local API with what is wrong, and,
stored before that check, left out of their batch by the uploader rather than holding
their stream up for ever. Also: the uploader idles, not spins, while its window is full.

A real store file and the real local API on a Unix socket; the "hub" is the uploader's
publish callback, which decodes every batch as the hub would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from edge.config import Sync
from edge.inference.directory import ModelDirectory
from edge.inference.service import InferenceService
from edge.localapi import LocalApi
from edge.store import AgentStore, Bounds
from edge.uploader import Uploader
from outpost import wire
from tests.support import eventually

UNBOUNDED = Bounds(0, 0, 0)
Post = Callable[[bytes, str], Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AgentStore]:
    opened = AgentStore(tmp_path / "store.db", {s: UNBOUNDED for s in wire.STREAMS})
    await opened.start()
    yield opened
    await opened.close()


@pytest.fixture
async def post(store: AgentStore, tmp_path: Path) -> AsyncIterator[Post]:
    """POST a body to /v1/records/events of a real local API on a Unix socket."""

    async def status() -> dict[str, Any]:
        return {}

    (tmp_path / "models").mkdir()
    service = InferenceService(ModelDirectory(tmp_path / "models"), store)
    api = LocalApi(store, service, status, 1 << 20)
    await api.start(tmp_path / "api.sock")
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
    )

    async def send(body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": content_type}
        async with session.post("http://agent/v1/records/events", data=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    yield send
    await session.close()
    await api.stop()


async def test_records_the_hub_could_never_take_are_refused_by_name(
    post: Post, store: AgentStore
) -> None:
    over = {"blob": "x" * wire.MAX_RECORD_BYTES}
    just_fits = {"blob": "x" * (wire.MAX_RECORD_BYTES - 16)}

    huge_int = await post(
        b'{"records": [{"n": 1}, {"count": 18446744073709551616}]}', "application/json"
    )
    number_key = await post(msgpack.packb({"records": [{1: "one"}]}), "application/msgpack")
    too_big = await post(msgpack.packb({"records": [over]}), "application/msgpack")
    nested_number_key = await post(
        msgpack.packb({"records": [{"counts": {1: 2}}]}), "application/msgpack"
    )
    fits = await post(msgpack.packb({"records": [just_fits]}), "application/msgpack")

    assert huge_int[0] == 400, huge_int
    assert huge_int[1]["error"]["message"].startswith("body.records[1]: ")
    assert number_key[0] == 400, number_key
    assert "body.records[0]: not a map with text keys" in number_key[1]["error"]["message"]
    assert too_big[0] == 413, too_big
    assert too_big[1]["error"]["code"] == "too_large"
    assert f"over the {wire.MAX_RECORD_BYTES:,} a record may hold" in too_big[1]["error"]["message"]
    # What the hub takes is taken: a nested map may have any keys, and the largest record.
    assert nested_number_key[0] == 201, nested_number_key
    assert fits[0] == 201, fits
    assert (fits[1]["first_seq"], fits[1]["last_seq"]) == (2, 2)  # nothing refused was kept


async def run_uploader(
    store: AgentStore, sync: Sync
) -> tuple[Uploader, list[wire.Records], asyncio.Task[None]]:
    sent: list[wire.Records] = []

    async def publish(topic: str, payload: bytes) -> None:  # decoded as the hub decodes it
        sent.append(wire.decode(payload, kinds=wire.UP_KINDS).body)

    async def ask_marks() -> None:
        pass

    uploader = Uploader(store, "dev-test00001", sync)
    for stream in wire.STREAMS:
        await uploader.on_ack(wire.Ack(stream=stream, hwm=0))
    return uploader, sent, asyncio.create_task(uploader.run(publish, ask_marks))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_stored_record_the_hub_would_refuse_is_left_out_and_its_stream_moves_on(
    store: AgentStore,
) -> None:
    """Stored before the local API checked records: sent, it failed the batch (the
    uploader died at every connection, or the hub refused the batch for ever)."""
    await store.append("events", [{"n": 1}, {2: "number key"}, {"blob": "x" * 300_000}, {"n": 4}])
    uploader, sent, task = await run_uploader(store, Sync())
    try:

        async def delivered() -> list[wire.Records]:
            batches = [b for b in sent if b.stream == "events"]
            return batches if batches and batches[-1].to_seq == 4 else []

        batches = await eventually(delivered, timeout=30, what="every events batch")
    finally:
        await stop(task)
    assert task.cancelled()  # it ran until stopped: the bad records did not end it
    # Every number covered, in order (the hub's mark moves past 2 and 3); only 1 and 4 sent.
    assert [b.from_seq for b in batches] == [1] + [b.to_seq + 1 for b in batches[:-1]]
    assert [s for b in batches for s in b.seqs] == [1, 4]
    assert [msgpack.unpackb(body) for b in batches for body in b.bodies] == [{"n": 1}, {"n": 4}]
    assert uploader.encoder.unsendable == 2


async def test_a_full_window_with_a_lingering_stream_idles(store: AgentStore) -> None:
    """The linger of a short batch lapsed while the window was full: the uploader woke at
    once, again and again (one core at 100 % until an ack came, up to ack_timeout_s)."""
    uploader, sent, task = await run_uploader(
        store, Sync(in_flight=2, linger_ms=100, ack_timeout_s=60)
    )
    passes = 0
    look = uploader._resend_if_stalled  # called once per pass of its loop

    def counted() -> None:
        nonlocal passes
        passes += 1
        look()

    uploader._resend_if_stalled = counted  # type: ignore[method-assign]
    try:
        await store.append("results", [{"r": 1}])

        async def sent_count(n: int) -> bool:
            return len(sent) >= n

        await eventually(lambda: sent_count(1), timeout=30, what="the first batch")
        # A second result (it lingers: its stream's batch is unacknowledged) and an event.
        await asyncio.gather(
            store.append("results", [{"r": 2}]), store.append("events", [{"e": 1}])
        )
        await eventually(lambda: sent_count(2), timeout=30, what="the event's batch")
        assert [b.stream for b in sent] == ["results", "events"]  # the window is full
        await asyncio.sleep(0.3)  # the linger lapses; no ack comes
        before = passes
        await asyncio.sleep(1.0)  # measured: how often it looks with nothing to do
    finally:
        await stop(task)
    assert passes - before <= 5, f"{passes - before} passes in 1 s with nothing to do"
