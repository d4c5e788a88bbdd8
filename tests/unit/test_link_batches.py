"""The hub link takes what is queued as one batch, within a count and a byte bound (a
compressed batch counts at its decompressed size)."""

from __future__ import annotations

from collections import deque

import aiomqtt
import msgspec

from hub.mqtt import link
from hub.mqtt.link import take_batch
from outpost import wire
from outpost.wire import packing

LIMIT = wire.MAX_PAYLOAD_BYTES


def message(size: int, n: int = 0) -> aiomqtt.Message:
    return aiomqtt.Message(f"outpost/v1/dev/d{n}/up/records", b"x" * size, 1, False, 1, None)


def packed(records: int) -> tuple[aiomqtt.Message, int]:
    """A `packed` message of `records` alike records (they compress about 100:1), and
    the size it decompresses to."""
    body = msgspec.msgpack.encode({"k": "x" * 200})
    batch = wire.Records(
        stream="metrics",
        from_seq=1,
        to_seq=records,
        seqs=list(range(1, records + 1)),
        ts=[1.0] * records,
        bodies=[body] * records,
    )
    payload = packing.Packer(packing.ZSTD).pack(batch)
    topic = wire.up_topic("dev-aaaaaaaaaaaa", "packed")
    return aiomqtt.Message(topic, payload, 1, False, 1, None), len(msgspec.msgpack.encode(batch))


class Queue:
    """What aiomqtt's message iterator offers: its length and the next message."""

    def __init__(self, sizes: list[int], queued: list[aiomqtt.Message] | None = None) -> None:
        self._left = deque(message(size, n) for n, size in enumerate(sizes))
        self._left.extend(queued or [])

    def __len__(self) -> int:
        return len(self._left)

    async def __anext__(self) -> aiomqtt.Message:
        return self._left.popleft()


async def test_it_takes_what_is_queued_up_to_the_count() -> None:
    queue = Queue([10] * (link.MAX_BATCH + 5))
    batch = await take_batch(message(10), queue, payload_limit=LIMIT)
    assert len(batch) == link.MAX_BATCH
    assert len(queue) == 6
    assert [topic for topic, _ in batch[:2]] == [
        "outpost/v1/dev/d0/up/records",
        "outpost/v1/dev/d0/up/records",
    ]


async def test_it_stops_once_the_payloads_reach_the_byte_bound() -> None:
    quarter = link.MAX_BATCH_BYTES // 4
    queue = Queue([quarter] * 10)
    batch = await take_batch(message(quarter), queue, payload_limit=LIMIT)
    assert len(batch) == 4  # the fourth reaches the bound: nothing more is taken
    assert len(queue) == 7
    assert sum(len(payload) for _, payload in batch) == link.MAX_BATCH_BYTES


async def test_a_message_over_the_bound_goes_alone() -> None:
    queue = Queue([10, 10])
    batch = await take_batch(message(link.MAX_BATCH_BYTES + 1), queue, payload_limit=LIMIT)
    assert len(batch) == 1
    assert len(queue) == 2


async def test_nothing_queued_is_a_batch_of_one() -> None:
    assert len(await take_batch(message(10), Queue([]), payload_limit=LIMIT)) == 1


async def test_a_packed_batch_counts_at_its_decompressed_size() -> None:
    """Counted at their 2 KB on the wire, 500 batches of 200 KB of records each (100 MB
    to check on the event loop) went into one batch; counted as the frame declares, the
    batch stops at the byte bound."""
    one, unpacked = packed(1000)
    assert len(one.payload) * 50 < unpacked  # the premise: it compresses that well
    queue = Queue([], [one] * (link.MAX_BATCH + 5))
    batch = await take_batch(one, queue, payload_limit=LIMIT)
    assert len(batch) == -(-link.MAX_BATCH_BYTES // unpacked)  # the one reaching the bound
