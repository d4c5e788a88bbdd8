"""A bus that crashes while the hub drains to it: NATS JetStream and RabbitMQ, each a
server of its own, killed with kill -9 mid-drain while changes keep coming, then started
again on the same store. The hub (a real child process) shows the sink failing, keeps
every event in its outbox meanwhile, and once the bus is back delivers the lot: every
event, those written during the outage too, in outbox order (so in order per device),
once each after dedupe by id."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import pytest

from hub.store import HubStore, outbox
from hub.store.outbox import SinkCursor
from tests.buses import (
    Received,
    ThrowawayNats,
    ThrowawayRabbit,
    once_each,
    read_stream,
    stream_count,
)
from tests.integration.sink_bus_support import outbox_number
from tests.integration.test_sink_faults import (
    cancelled,
    hub_with_sink,
    rounds_of_changes,
    stream_exists,
)
from tests.soak import HubProcess
from tests.support import eventually

ROUNDS = 5  # of 100 devices enrolled then relabelled: 1,000 events in all


async def hook_cursor(store: HubStore) -> SinkCursor:
    (found,) = [c for c in await store.run(outbox.cursors) if c.sink == "hook"]
    return found


@pytest.mark.slow
@pytest.mark.timeout(420)  # RabbitMQ boots twice (~7 s each here, 5x on a slow machine)
@pytest.mark.parametrize("bus", ["nats", "rabbitmq"])
async def test_a_bus_killed_mid_drain_gets_every_event_once_in_order_after_restart(
    tmp_path: Path, bus: str
) -> None:
    name = f"outage{uuid.uuid4().hex[:8]}"
    count: Callable[[], Awaitable[int]]
    everything: Callable[[], Awaitable[list[Received]]]
    async with contextlib.AsyncExitStack() as stack:
        if bus == "nats":
            server = stack.enter_context(ThrowawayNats())
            sink = f'kind = "nats"\nurl = "{server.url}"\ntarget = "{name}"\n'

            async def count() -> int:
                if not await stream_exists(server, name):
                    return 0
                return await stream_count(server.url, name)

            async def everything() -> list[Received]:
                return await read_stream(server.url, name, timeout=60)

            restart = server.start
        else:
            node = stack.enter_context(ThrowawayRabbit())
            sink = (
                f'kind = "rabbitmq"\nurl = "{node.address}"\ntarget = "{name}"\n'
                f'credentials_file = "{node.credentials_file()}"\n'
            )
            # A durable queue, bound before the hub publishes, keeps what the broker
            # confirmed across its crash; it is read only at the end.
            async with await aio_pika.connect(node.url()) as connection:
                channel = await connection.channel()
                exchange = await channel.declare_exchange(
                    name, aio_pika.ExchangeType.TOPIC, durable=True
                )
                queue = await channel.declare_queue("kept", durable=True)
                await queue.bind(exchange, "outpost.#")

            async def count() -> int:
                async with await aio_pika.connect(node.url()) as connection:
                    channel = await connection.channel()
                    queue = await channel.declare_queue("kept", passive=True)
                    held = queue.declaration_result.message_count
                    return int(held or 0)

            async def everything() -> list[Received]:
                got = []
                async with await aio_pika.connect(node.url()) as connection:
                    channel = await connection.channel()
                    queue = await channel.get_queue("kept")
                    while (message := await queue.get(no_ack=True, fail=False)) is not None:
                        got.append(
                            Received(
                                message.routing_key or "", message.message_id or "", message.body
                            )
                        )
                return got

            restart = node.start
        crash = server.kill if bus == "nats" else node.kill

        paths = hub_with_sink(tmp_path, sink)
        hub = HubProcess(paths, tmp_path)
        stack.callback(hub.stop)
        await hub.start()
        reader = HubStore(paths.database)
        stack.callback(reader.close)

        writer = asyncio.create_task(
            rounds_of_changes(paths.database, ROUNDS), name="changes beside the hub"
        )
        stack.push_async_callback(cancelled, writer)

        async def under_way() -> bool:
            return await count() >= 100

        await eventually(under_way, timeout=120, what="the drain under way")
        crash()  # kill -9, mid-drain, while changes keep coming
        at_crash = (await hook_cursor(reader)).position

        async def failing() -> bool:
            return (await hook_cursor(reader)).state == "failing"

        await eventually(failing, timeout=120, what="the sink failing while the bus is down")
        held = (await hook_cursor(reader)).position

        async def piled_up() -> bool:
            newest, _ = await reader.run(outbox.head)
            return newest >= held + 100 or writer.done()

        await eventually(piled_up, timeout=120, what="events written during the outage")
        during = (await reader.run(outbox.head))[0] - held
        restart()  # the same port and store
        written = await writer

        async def all_there() -> bool:
            cursor = await hook_cursor(reader)
            return cursor.position == written[-1] and await count() >= len(written)

        try:
            await eventually(all_there, timeout=180, what="every event after the restart")
        except AssertionError as exc:
            # Once under the whole suite (RabbitMQ, 2026-12-06), not since alone: say
            # where the drain stood, with the hub's own account of its sink.
            cursor = await hook_cursor(reader)
            logs = sorted(tmp_path.glob("hub-*.log"))
            tail = logs[-1].read_text()[-4000:] if logs else "no hub log"
            raise AssertionError(
                f"{exc}: cursor {cursor}, {await count()} of {len(written)} on the bus, "
                f"last written {written[-1]}; the hub's log ends:\n{tail}"
            ) from exc
        received = await everything()
        cursor = await hook_cursor(reader)

    assert at_crash < written[-1]
    kept = once_each(received)
    assert [outbox_number(m.id) for m in kept] == written
    by_device = collections.defaultdict(list)
    for message in kept:
        body = json.loads(message.body)
        by_device[body["subject"]].append(body["type"].rsplit(".", 1)[1])
        assert message.topic.endswith(body["subject"])
    assert len(by_device) == ROUNDS * 100
    assert during > 0, "events waited in the outbox for the bus"
    assert set(map(tuple, by_device.values())) == {("enrolled", "relabelled")}
    assert cursor.retried >= 1
    assert cursor.overflowed == 0
    assert cursor.delivered >= len(written)
    repeats = len(received) - len(kept)
    print(
        f"{bus}: killed at cursor {at_crash} of {written[-1]}; held at {held} with "
        f"{during} events written past it during the outage; {repeats} delivered twice"
    )
