"""Outpost's events from NATS JetStream, each handled once.

A durable pull consumer on the hub's stream (OUTPOST, subjects outpost.>) acknowledges
each message once handled. JetStream drops an event the hub publishes again within the
stream's duplicate window; one published again later, or delivered again because its ack
was lost, has its id in the seen table, which commits with the work: done only once.
Start it once the hub's sink has made the stream.

    .venv/bin/python examples/nats_consumer.py [nats://USER:PASSWORD@HOST:4222] [STREAM]
"""

import asyncio
import json
import sqlite3
import sys

import nats
import nats.errors

URL = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"
STREAM = sys.argv[2] if len(sys.argv) > 2 else "OUTPOST"
KEEP = 100_000  # ids remembered: an event comes again within minutes, not 100k events later


async def main() -> None:
    db = sqlite3.connect("outpost-seen.sqlite")  # in the working folder
    db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
    client = await nats.connect(URL)
    events = await client.jetstream().pull_subscribe("outpost.>", "outpost-example", STREAM)
    while True:
        try:
            batch = await events.fetch(100, timeout=5)
        except nats.errors.TimeoutError:
            continue  # nothing new
        for msg in batch:
            event = json.loads(msg.data)
            with db:  # the id and the work done for the event commit together
                if db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (event["id"],)).rowcount:
                    print(event["id"], event["type"], msg.subject, flush=True)  # the work
            await msg.ack()
        with db:
            db.execute("DELETE FROM seen WHERE rowid <= (SELECT MAX(rowid) FROM seen) - ?", [KEEP])


asyncio.run(main())
