"""Event sinks: what the outbox costs ingest, and how fast events leave it.

- Ingest with sinks on vs off: result batches (50 records of the shape the demo's
  producers post) stored through the hub's own upload path into SQLite, records/s; with
  sinks each record also writes its event into the outbox in the same transaction. The
  raw limit is the same path with no sinks.
- Ingest beside a draining webhook sink, as in the hub (one event loop, one store): a
  receiver that never answers (stalled), one that takes 10 ms an event (slow), and one
  answering at once (fast: the drain keeps pace and competes hardest), against the same
  path with no sinks.
- Outbox to a webhook: events drained by a real drain and webhook sink into a local
  aiohttp receiver answering 204, events/s, against bare aiohttp POSTs of the same bodies
  to the same receiver (one at a time, in order, as the sink must).
- Outbox to NATS JetStream and to RabbitMQ (when their sinks and throwaway servers are
  there): a drain into each against the library's own publish with acks or confirms.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import msgspec
from aiohttp import web

from hub.sinks import nats as nats_sink
from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink
from hub.store import Device, HubStore, Upload, outbox
from tests.bench import buses_bare
from tests.bench.common import RESULT, Result
from tests.buses import ThrowawayNats, ThrowawayRabbit
from tests.support import free_port

BATCHES = 200
PER_BATCH = 50
EVENTS = 5_000
BOUNDS = Bounds(max_events=10_000_000, max_age_s=86400)
SLOW_S = 0.01  # a slow webhook receiver's time an event


async def _ingest(root: Path, *, sinks: bool, receiver: str = "") -> float:
    """Records/s stored through apply_uploads, with or without the outbox; `receiver`
    (stalled, slow or fast): with a drain to a webhook receiver of that kind running
    beside it on the same loop and store, as in the hub."""
    store = HubStore(root / f"ingest-{'on' if sinks else 'off'}{receiver}.db")
    if sinks:
        store.publish_events()
    beside: asyncio.Task[None] | None = None
    hook: Receiver | None = None
    try:
        if receiver:
            hook = Receiver(pace=receiver)
            await hook.start()
            secret = root / "ingest.secret"
            secret.write_text("bench-secret")
            config = SinkConfig(
                name="hook",
                kind="webhook",
                url=f"http://127.0.0.1:{hook.port}/events",
                credentials_file=str(secret),
                timeout_s=300,
            )
            drain = Drain(config, store, make_sink, source="https://bench", bounds=BOUNDS)
            beside = asyncio.create_task(drain.run())
            await _settled(store, config.name)
        await store.add_device(
            Device(
                "dev-bench0000001",
                "generic",
                {},
                False,
                None,
                None,
                None,
                None,
                {},
                {},
                0.0,
                None,
                None,
                None,
            )
        )
        body = msgspec.msgpack.encode(RESULT)
        uploads = []
        for b in range(BATCHES):
            first = b * PER_BATCH + 1
            rows = [(first + i, time.time(), body) for i in range(PER_BATCH)]
            uploads.append(
                Upload("dev-bench0000001", "results", first, first + PER_BATCH - 1, rows)
            )
        started = time.perf_counter()
        for upload in uploads:
            await store.apply_uploads([upload], now=time.time())
        rate = BATCHES * PER_BATCH / (time.perf_counter() - started)
        if receiver:
            stored = await store.run(
                lambda db: db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            )
            newest, _ = await store.run(outbox.head)
            assert stored == BATCHES * PER_BATCH, stored  # nothing lost beside the drain
            assert newest >= BATCHES * PER_BATCH, newest
        return rate
    finally:
        if beside is not None:
            beside.cancel()
            await asyncio.gather(beside, return_exceptions=True)
        if hook is not None:
            await hook.stop()
        store.close()


class Receiver:
    """Answers 204 to every POST and counts them; `pace`: "stalled" never answers,
    "slow" takes 10 ms an event."""

    def __init__(self, pace: str = "fast") -> None:
        self.pace = pace
        self.release = asyncio.Event()
        self.count = 0
        self.port = free_port()
        self.done = asyncio.Event()
        self.wanted = 0
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, access_log=None)

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.pace == "stalled":
            await self.release.wait()  # held until the receiver stops
        elif self.pace == "slow":
            await asyncio.sleep(SLOW_S)  # the receiver's own pace
        self.count += 1
        if self.count >= self.wanted:
            self.done.set()
        return web.Response(status=204)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def expect(self, n: int) -> None:
        self.count, self.wanted = 0, n
        self.done.clear()

    async def stop(self) -> None:
        self.release.set()
        await self._runner.cleanup()


async def _fill_outbox(store: HubStore, n: int) -> None:
    """`n` events of a result's shape, written in transactions of 500."""
    data: dict[str, Any] = {"stream": "results", "seq": 1, "ts": time.time(), "record": RESULT}

    def write(db: Any, count: int) -> None:
        with db.write():
            outbox.emit_many(db, [("record.result", "dev-bench0000001", data, time.time())] * count)

    for first in range(0, n, 500):
        await store.run(write, min(500, n - first))


async def _drain_rate(
    store: HubStore,
    config: SinkConfig,
    done: asyncio.Event,
    until: Coroutine[Any, Any, None] | None = None,
) -> float:
    """Events/s a drain delivers: from a cursor at the outbox's start to its end (`done`
    is set by the receiver, or by `until` watching the bus)."""
    await store.run(
        lambda db: db.execute("DELETE FROM sink_cursors WHERE sink = ?", (config.name,))
    )
    await store.run(lambda db: db.execute("DELETE FROM outbox"))
    drain = Drain(config, store, make_sink, source="https://bench", bounds=BOUNDS)
    task = asyncio.create_task(drain.run())
    try:
        await _settled(store, config.name)  # the cursor exists, at the (empty) end
        await _fill_outbox(store, EVENTS)
        started = time.perf_counter()
        drain.wake()
        watcher = asyncio.create_task(until) if until is not None else None
        try:
            await asyncio.wait_for(done.wait(), 300)
        finally:
            if watcher is not None:
                watcher.cancel()
        return EVENTS / (time.perf_counter() - started)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _settled(store: HubStore, name: str) -> None:
    for _ in range(1000):
        if await store.run(outbox.position_of, name) is not None:
            return
        await asyncio.sleep(0.01)  # the drain opening its cursor
    raise RuntimeError(f"the drain of {name} never opened its cursor")


async def _bare_posts(url: str, bodies: list[bytes]) -> float:
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for body in bodies:
            async with session.post(url, data=body) as response:
                assert response.status == 204
        return len(bodies) / (time.perf_counter() - started)


async def _run(root: Path) -> list[Result]:
    results = []
    off = await _ingest(root, sinks=False)
    on = await _ingest(root, sinks=True)
    results.append(
        Result(
            "sinks: ingest with the outbox (results, SQLite)",
            on,
            off,
            "rec/s",
            f"batches of {PER_BATCH}; raw = the same path with no sinks",
        )
    )
    for pace in ("stalled", "slow", "fast"):
        beside = await _ingest(root, sinks=True, receiver=pace)
        results.append(
            Result(
                f"sinks: ingest beside a {pace} webhook",
                beside,
                off,
                "rec/s",
                "the drain on the same loop and store; raw = no sinks",
            )
        )

    store = HubStore(root / "drain.db")
    store.publish_events()
    receiver = Receiver()
    await receiver.start()
    try:
        secret = root / "bench.secret"
        secret.write_text("bench-secret")
        url = f"http://127.0.0.1:{receiver.port}/events"
        config = SinkConfig(
            name="hook", kind="webhook", url=url, credentials_file=str(secret), timeout_s=30
        )
        await receiver.expect(EVENTS)
        mine = await _drain_rate(store, config, receiver.done)
        body = json.dumps({"data": {"record": RESULT}, "id": "evt-1"}).encode()
        await receiver.expect(EVENTS)
        bare = await _bare_posts(url, [body] * EVENTS)
        results.append(
            Result(
                "sinks: outbox -> webhook (HTTP, loopback)",
                mine,
                bare,
                "events/s",
                "one POST an event, in order, signed; raw = bare aiohttp POSTs",
            )
        )
        results.extend(await _buses(store, root))
    finally:
        await receiver.stop()
        store.close()
    return results


async def _buses(store: HubStore, root: Path) -> list[Result]:
    """Outbox -> NATS JetStream and -> RabbitMQ, on throwaway servers, against the
    library's own publish of the same number of messages, each acknowledged in order."""
    results = []
    with ThrowawayNats() as nats_server:
        config = SinkConfig(name="bus", kind="nats", url=nats_server.url, target="BENCH")
        done = asyncio.Event()
        # Done once the cursor passed every event: it moves only after their acks (a
        # watcher asking the server for the stream's count would load the 2 cores too).
        mine = await _drain_rate(store, config, done, until=_confirmed(store, "bus", done))
        bare = await buses_bare.bare_nats_publish_rate(
            nats_server.url, EVENTS, window=nats_sink.WINDOW
        )
        results.append(
            Result(
                "sinks: outbox -> NATS JetStream",
                mine,
                bare,
                "events/s",
                f"acks awaited in order, {nats_sink.WINDOW} in flight, Nats-Msg-Id; raw = "
                "nats-py publish, the same window",
            )
        )
    with ThrowawayRabbit() as rabbit:
        credentials = root / "rabbit.creds"
        credentials.write_text(f"{rabbit.user}:{rabbit.password}")
        config = SinkConfig(
            name="amqp",
            kind="rabbitmq",
            url=rabbit.address,
            credentials_file=str(credentials),
            target="bench",
        )
        await _bound_queue(rabbit.url(), "bench")  # as a consumer's: messages go to disk
        done = asyncio.Event()
        mine = await _drain_rate(store, config, done, until=_confirmed(store, "amqp", done))
        bare = await buses_bare.bare_amqp_publish_rate(rabbit.url(), EVENTS)
        results.append(
            Result(
                "sinks: outbox -> RabbitMQ",
                mine,
                bare,
                "events/s",
                "persistent, a durable queue bound, each confirm awaited; raw = aio-pika "
                "publish, each confirmed in turn",
            )
        )
    return results


async def _bound_queue(url: str, exchange: str) -> None:
    """A durable queue bound to everything the exchange routes (declared as the sink
    declares it), so the broker persists each message as it would for a consumer."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(f"{exchange}-consumer", durable=True)
        await queue.bind(declared, "#")
    finally:
        await connection.close()


async def _confirmed(store: HubStore, sink: str, done: asyncio.Event) -> None:
    """Set `done` once the sink's cursor passed every event (moved after the confirms)."""
    while True:
        newest, _ = await store.run(outbox.head)
        position = await store.run(outbox.position_of, sink)
        if newest and position is not None and position >= newest:
            done.set()
            return
        await asyncio.sleep(0.02)  # polling the cursor


def run(root: Path) -> list[Result]:
    return asyncio.run(_run(root))
