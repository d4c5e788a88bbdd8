"""Outpost's events from RabbitMQ, each handled once.

A durable queue bound to the hub's topic exchange (outpost) with `outpost.#` takes every
event (bind `outpost.task.#` for fewer). After a crash the hub publishes the events it
had no confirm for again, with the same message_id: this skips the ids it has seen. It
keeps them in memory, so a restart forgets them: keep them with the work's own data
(as nats_consumer.py does) where a repeat after a restart matters.

    .venv/bin/python examples/rabbitmq_consumer.py [amqp://USER:PASSWORD@HOST:5672/] [EXCHANGE]
"""

import asyncio
import json
import sys
from collections import OrderedDict

import aio_pika

URL = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/"
EXCHANGE = sys.argv[2] if len(sys.argv) > 2 else "outpost"
KEEP = 100_000  # ids remembered: a repeat comes soon after the first copy


async def main() -> None:
    seen: OrderedDict[str, None] = OrderedDict()
    async with await aio_pika.connect_robust(URL) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        exchange = await channel.declare_exchange(EXCHANGE, "topic", durable=True)
        queue = await channel.declare_queue(f"{EXCHANGE}-example", durable=True)
        await queue.bind(exchange, "outpost.#")
        async for message in queue.iterator():
            async with message.process():  # acked at the end of the block, unless it raises
                if message.message_id is None or message.message_id in seen:
                    continue
                event = json.loads(message.body)
                print(event["id"], event["type"], message.routing_key, flush=True)  # the work
                seen[message.message_id] = None
                if len(seen) > KEEP:
                    seen.popitem(last=False)


asyncio.run(main())
