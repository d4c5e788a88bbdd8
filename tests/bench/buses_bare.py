"""The raw publish rate of each bus through its Python library, with nothing of Outpost's
in the way: the limit the outbox's NATS and RabbitMQ sinks are compared against.

Each publishes `n` small messages (~200 B, with the same dedupe id a sink sends) and
waits for the bus to take every one: JetStream publish acks, AMQP publisher confirms.
`window` is how many may await their ack at once: 1 is one at a time, in order, as a
sink that must keep order through a refusal publishes; more shows what the library
reaches with acks pipelined.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any

import aio_pika
import nats
from nats.js.api import StorageType, StreamConfig

BODY = b'{"specversion":"1.0","type":"org.outpost.bench","data":{"x":"' + b"x" * 140 + b'"}}'


async def _windowed(sends: Iterator[Awaitable[Any]], window: int) -> None:
    """Await each of `sends` in order, with at most `window` outstanding."""
    pending: collections.deque[asyncio.Future[Any]] = collections.deque()
    for send in sends:
        pending.append(asyncio.ensure_future(send))
        if len(pending) >= window:
            await pending.popleft()
    for future in pending:
        await future


async def bare_nats_publish_rate(
    url: str, n: int, *, user: str = "", password: str = "", window: int = 1
) -> float:
    """Messages/s into a JetStream stream (file storage, made for the run and deleted
    after it), each publish acknowledged."""
    client = await nats.connect(
        url, user=user or None, password=password or None, allow_reconnect=False
    )
    js = client.jetstream()
    name = f"BENCH_{uuid.uuid4().hex[:12]}"
    subject = f"bench.{name}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    try:
        started = time.perf_counter()
        if window <= 1:
            for i in range(n):
                await js.publish(subject, BODY, headers={"Nats-Msg-Id": f"m-{i}"})
        else:
            acks = []
            for i in range(n):
                acks.append(
                    await js.publish_async(subject, BODY, headers={"Nats-Msg-Id": f"m-{i}"})
                )
                if len(acks) >= window:
                    await acks.pop(0)
            for ack in acks:
                await ack
        elapsed = time.perf_counter() - started
    finally:
        await js.delete_stream(name)
        await client.close()
    return n / elapsed


async def bare_amqp_publish_rate(url: str, n: int, *, window: int = 1) -> float:
    """Messages/s into a durable topic exchange (made for the run and deleted after it)
    with a durable queue bound, persistent messages, each publish confirmed."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"bench-{uuid.uuid4().hex[:12]}"
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        # A queue bound, so the broker persists each message as it would for a consumer.
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, "#")
        try:
            started = time.perf_counter()
            sends = (
                exchange.publish(
                    aio_pika.Message(
                        BODY,
                        message_id=f"m-{i}",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                    ),
                    routing_key="bench",
                    mandatory=False,
                )
                for i in range(n)
            )
            await _windowed(sends, window)
            elapsed = time.perf_counter() - started
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
        return n / elapsed
    finally:
        await connection.close()
