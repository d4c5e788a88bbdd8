"""The hub link takes what is queued as one batch, within a count and a byte bound."""

from __future__ import annotations

from collections import deque

import aiomqtt

from hub.mqtt import link
from hub.mqtt.link import take_batch


def message(size: int, n: int = 0) -> aiomqtt.Message:
    return aiomqtt.Message(f"outpost/v1/dev/d{n}/up/records", b"x" * size, 1, False, 1, None)


class Queue:
    """What aiomqtt's message iterator offers: its length and the next message."""

    def __init__(self, sizes: list[int]) -> None:
        self._left = deque(message(size, n) for n, size in enumerate(sizes))

    def __len__(self) -> int:
        return len(self._left)

    async def __anext__(self) -> aiomqtt.Message:
        return self._left.popleft()


async def test_it_takes_what_is_queued_up_to_the_count() -> None:
    queue = Queue([10] * (link.MAX_BATCH + 5))
    batch = await take_batch(message(10), queue)
    assert len(batch) == link.MAX_BATCH
    assert len(queue) == 6
    assert [topic for topic, _ in batch[:2]] == [
        "outpost/v1/dev/d0/up/records",
        "outpost/v1/dev/d0/up/records",
    ]


async def test_it_stops_once_the_payloads_reach_the_byte_bound() -> None:
    quarter = link.MAX_BATCH_BYTES // 4
    queue = Queue([quarter] * 10)
    batch = await take_batch(message(quarter), queue)
    assert len(batch) == 4  # the fourth reaches the bound: nothing more is taken
    assert len(queue) == 7
    assert sum(len(payload) for _, payload in batch) == link.MAX_BATCH_BYTES


async def test_a_message_over_the_bound_goes_alone() -> None:
    queue = Queue([10, 10])
    batch = await take_batch(message(link.MAX_BATCH_BYTES + 1), queue)
    assert len(batch) == 1
    assert len(queue) == 2


async def test_nothing_queued_is_a_batch_of_one() -> None:
    assert len(await take_batch(message(10), Queue([]))) == 1
