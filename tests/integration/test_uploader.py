"""The uploader's protocol against a real store, with the MQTT side recorded in memory:
alignment, order of streams, acks, gaps and resends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config import Sync
from edge.store import AgentStore, Bounds
from edge.uploader import Uploader
from outpost import wire
from tests.support import eventually

UNBOUNDED = Bounds(0, 0, 0)


class Wire:
    """Records what the uploader publishes and how often it asks for marks."""

    def __init__(self) -> None:
        self.sent: list[wire.Records] = []
        self.asked = 0

    async def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append(wire.decode(payload, kinds=wire.UP_KINDS).body)

    async def ask_marks(self) -> None:
        self.asked += 1


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AgentStore]:
    opened = AgentStore(tmp_path / "store.db", {s: UNBOUNDED for s in wire.STREAMS})
    await opened.start()
    yield opened
    await opened.close()


@contextlib.asynccontextmanager
async def running(uploader: Uploader, link: Wire) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uploader.run(link.publish, link.ask_marks))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def align(uploader: Uploader, hwm: int = 0) -> None:
    for stream in wire.STREAMS:
        await uploader.on_ack(wire.Ack(stream=stream, hwm=hwm))


async def test_nothing_is_sent_before_the_hub_gives_its_marks(store: AgentStore) -> None:
    await store.append("results", [{"n": 1}])
    uploader = Uploader(store, "dev-test00001", Sync(ack_timeout_s=0.2))
    link = Wire()
    async with running(uploader, link):

        async def asked_twice() -> bool:
            return link.asked >= 2

        await eventually(asked_twice, what="the uploader asking for marks again")
        assert link.sent == []
        await align(uploader, hwm=40)  # the hub holds 1..40 of an earlier store

        async def sent() -> bool:
            return bool(link.sent)

        await eventually(sent, what="a batch after alignment")
    batch = link.sent[0]
    assert (batch.from_seq, batch.to_seq, batch.seqs) == (41, 41, [41])


async def test_results_go_before_events_before_metrics(store: AgentStore) -> None:
    await store.append("metrics", [{"m": 1}])
    await store.append("events", [{"e": 1}])
    await store.append("results", [{"r": 1}])
    uploader = Uploader(store, "dev-test00001", Sync(in_flight=8))
    link = Wire()
    await align(uploader)
    async with running(uploader, link):

        async def all_three() -> bool:
            return len(link.sent) == 3

        await eventually(all_three, what="three batches")
    assert [b.stream for b in link.sent] == ["results", "events", "metrics"]


async def test_acks_delete_a_gap_rewinds_and_silence_resends(store: AgentStore) -> None:
    await store.append("results", [{"n": n} for n in range(6)])
    uploader = Uploader(
        store, "dev-test00001", Sync(batch_records=2, in_flight=3, ack_timeout_s=0.5)
    )
    link = Wire()
    await align(uploader)
    async with running(uploader, link):

        async def window_full() -> bool:
            return len(link.sent) >= 3  # more only if a stalled loop let the timeout pass

        await eventually(window_full, what="three batches in flight")
        assert [(b.from_seq, b.to_seq) for b in link.sent[:3]] == [(1, 2), (3, 4), (5, 6)]

        await uploader.on_ack(wire.Ack(stream="results", hwm=2))
        assert (await store.cursors())["results"] == (2, 6)

        # The hub lost 3..4 (say its database was restored): it asks from 3 again.
        await uploader.on_ack(wire.Ack(stream="results", hwm=2, gap=True))

        async def resent() -> bool:
            return any(b.from_seq == 3 for b in link.sent[3:])

        await eventually(resent, what="a resend from the hub's mark")
        count = len(link.sent)

        # No ack at all: after the timeout everything unacknowledged goes again.
        async def resent_after_silence() -> bool:
            return sum(b.from_seq == 3 for b in link.sent[count:]) >= 1

        await eventually(resent_after_silence, timeout=5, what="a resend after silence")
    remaining = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)
    assert [seq for seq, _, _ in remaining] == [3, 4, 5, 6]


async def test_a_short_batch_lingers_and_a_full_one_goes_at_once(store: AgentStore) -> None:
    # Long enough that each ten appends on a slow, busy machine fall inside it (2 s left
    # little room); only the last, short batch waits it out.
    uploader = Uploader(
        store, "dev-test00001", Sync(batch_records=10, in_flight=8, linger_ms=10_000)
    )
    link = Wire()
    async with running(uploader, link):
        await align(uploader)
        await store.append("results", [{"n": 0}])  # a quiet device: sent at once

        async def first() -> bool:
            return len(link.sent) == 1

        await eventually(first, what="the first record, at once")
        for n in range(1, 30):
            await store.append("results", [{"n": n}])

        async def everything() -> bool:
            return sum(len(b.seqs) for b in link.sent) == 30

        await eventually(everything, timeout=30, what="the lingering rest")
    # Full batches went as soon as they were full; the last 9 waited for the linger.
    assert [len(b.seqs) for b in link.sent] == [1, 10, 10, 9]
    assert [b.seqs[0] for b in link.sent] == [1, 2, 12, 22]


async def test_with_no_linger_each_record_goes_at_once(store: AgentStore) -> None:
    uploader = Uploader(store, "dev-test00001", Sync(batch_records=10, linger_ms=0))
    link = Wire()
    async with running(uploader, link):
        await align(uploader)
        for n in range(3):
            await store.append("results", [{"n": n}])

            async def sent(count: int = n + 1) -> bool:
                return len(link.sent) == count

            await eventually(sent, what=f"record {n + 1} in its own batch")
    assert [b.seqs for b in link.sent] == [[1], [2], [3]]


async def test_a_record_after_an_acknowledged_batch_goes_at_once(store: AgentStore) -> None:
    # A task's result on a quiet stream: its last batch is acknowledged, so nothing
    # lingers, however long the linger (a wait for it would outlast the deadline below).
    uploader = Uploader(store, "dev-test00001", Sync(batch_records=10, linger_ms=10_000))
    link = Wire()
    async with running(uploader, link):
        await align(uploader)
        for n in range(1, 4):
            await store.append("results", [{"n": n}])

            async def sent(count: int = n) -> bool:
                return len(link.sent) == count

            await eventually(sent, timeout=5, what=f"result {n} at once")
            await uploader.on_ack(wire.Ack(stream="results", hwm=n))
    assert [b.seqs for b in link.sent] == [[1], [2], [3]]


async def test_a_failed_publish_ends_the_run_with_its_error(store: AgentStore) -> None:
    # Publishes are not awaited one by one (the next batch is read meanwhile), but a
    # failure still ends the connection's run, as an awaited one did.
    await store.append("results", [{"n": n} for n in range(4)])

    class Down(Wire):
        async def publish(self, topic: str, payload: bytes) -> None:
            if self.sent:
                raise ConnectionResetError("the link went down")
            await super().publish(topic, payload)

    uploader = Uploader(store, "dev-test00001", Sync(batch_records=2, in_flight=4))
    await align(uploader)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(uploader.run(Down().publish, Wire().ask_marks), 10)


async def test_the_next_batch_is_read_while_the_window_is_full(store: AgentStore) -> None:
    await store.append("results", [{"n": n} for n in range(6)])
    reads: list[int] = []
    read = store.batch_packed

    async def counted(
        stream: str, after_seq: int, *, max_records: int, max_bytes: int
    ) -> list[tuple[int, float, bytes]]:
        reads.append(after_seq)
        return await read(stream, after_seq, max_records=max_records, max_bytes=max_bytes)

    store.batch_packed = counted  # type: ignore[method-assign]
    uploader = Uploader(store, "dev-test00001", Sync(batch_records=2, in_flight=1))
    link = Wire()
    await align(uploader)
    async with running(uploader, link):

        async def read_ahead() -> bool:
            return reads == [0, 2]

        await eventually(read_ahead, what="the second batch read while the first flies")
        assert [(b.from_seq, b.to_seq) for b in link.sent] == [(1, 2)]
        await uploader.on_ack(wire.Ack(stream="results", hwm=2))

        async def second_sent() -> bool:
            return len(link.sent) == 2

        await eventually(second_sent, what="the batch read ahead, sent on the ack")
        assert reads[:2] == [0, 2]  # sent as read: no second trip to the store for it
        assert (link.sent[1].from_seq, link.sent[1].to_seq) == (3, 4)


async def test_a_batch_read_ahead_is_dropped_when_a_gap_rewinds(store: AgentStore) -> None:
    await store.append("results", [{"n": n} for n in range(6)])
    uploader = Uploader(store, "dev-test00001", Sync(batch_records=2, in_flight=1))
    link = Wire()
    await align(uploader)
    async with running(uploader, link):

        async def first() -> bool:
            return len(link.sent) == 1

        await eventually(first, what="the first batch")
        # The hub holds nothing of it (a restored database): send from 1 again, not the
        # batch 3..4 already read ahead.
        await uploader.on_ack(wire.Ack(stream="results", hwm=0, gap=True))

        async def resent() -> bool:
            return len(link.sent) == 2

        await eventually(resent, what="the resend after the gap")
    assert [(b.from_seq, b.to_seq) for b in link.sent] == [(1, 2), (1, 2)]


class AckingWire(Wire):
    """A hub that acknowledges each batch `delay_s` after it arrives."""

    def __init__(self, uploader: Uploader, delay_s: float) -> None:
        super().__init__()
        self._uploader = uploader
        self._delay_s = delay_s
        self._acks: set[asyncio.Task[None]] = set()

    async def publish(self, topic: str, payload: bytes) -> None:
        await super().publish(topic, payload)
        batch = self.sent[-1]
        task = asyncio.create_task(self._ack(batch.stream, batch.to_seq))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ack(self, stream: wire.Stream, hwm: int) -> None:
        await asyncio.sleep(self._delay_s)  # the link's and the hub's time, simulated
        await self._uploader.on_ack(wire.Ack(stream=stream, hwm=hwm))


def plain_bytes(batch: wire.Records) -> int:
    return sum(len(body) for body in batch.bodies)


RECORD = {"input_id": "x" * 1000}  # about 1 KiB packed


async def test_batches_grow_while_acks_come_back_quickly(store: AgentStore) -> None:
    await store.append("results", [RECORD] * 1500)
    uploader = Uploader(store, "dev-test00001", Sync(in_flight=1, ack_timeout_s=10))
    link = AckingWire(uploader, delay_s=0)
    await align(uploader)
    async with running(uploader, link):

        async def all_acked() -> bool:
            return (await store.cursors())["results"][0] == 1500

        await eventually(all_acked, what="every record acknowledged")
    sizes = [plain_bytes(b) for b in link.sent]
    assert sizes[0] <= 64 * 1024 < sizes[0] + 1100  # the first batch: the starting budget
    assert max(sizes) > 128 * 1024  # then twice, then the ceiling
    assert all(size <= 200 * 1024 for size in sizes)
    assert uploader.budget.bytes == 200 * 1024


async def test_batches_shrink_while_acks_are_slow(store: AgentStore) -> None:
    await store.append("results", [RECORD] * 200)
    # Slow: over half the ack timeout (0.6 s of 1 s) for each batch.
    uploader = Uploader(store, "dev-test00001", Sync(in_flight=1, ack_timeout_s=1))
    link = AckingWire(uploader, delay_s=0.6)
    await align(uploader)
    async with running(uploader, link):

        async def two_sent() -> bool:
            return len(link.sent) >= 2

        await eventually(two_sent, timeout=30, what="a second batch after a slow ack")
    first, second = (plain_bytes(b) for b in link.sent[:2])
    assert first > 60 * 1024
    assert second <= 32 * 1024 < second + 1100


async def test_a_silent_hub_gets_the_window_again_less_and_less_often(tmp_path: Path) -> None:
    """The broker takes every publish and no ack ever comes (the hub's replicas down):
    the window went again every ack_timeout_s for as long as that lasted."""
    store = AgentStore(tmp_path / "store.db", {s: UNBOUNDED for s in wire.STREAMS})
    await store.start()
    try:
        await store.append("results", [{"n": n} for n in range(20)])
        uploader = Uploader(store, "dev-000000000001", Sync(ack_timeout_s=0.5, in_flight=4))
        for stream in wire.STREAMS:
            await uploader.on_ack(wire.Ack(stream=stream, hwm=0))
        firsts: list[int] = []

        async def publish(topic: str, payload: bytes) -> None:  # taken, never acked
            body = wire.decode(payload, kinds=wire.UP_KINDS).body
            if body.from_seq == 1:
                firsts.append(1)

        async def ask() -> None:
            pass

        running = asyncio.create_task(uploader.run(publish, ask))
        await asyncio.sleep(6.0)  # the hub's silence, the fault itself
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        # Sent, then again after 0.5 s, 1-1.25 s, 2-3.1 s: 4 times at most in 6 s (every
        # 0.5 s, with the uploader's 1 s look, it went 6 times).
        assert 2 <= len(firsts) <= 4
    finally:
        await store.close()
