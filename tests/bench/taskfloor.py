"""The raw limit of one task alone: its path's parts, bare, in the same run.

A task submitted alone crosses, at the least: an HTTPS POST, a synced commit of the task
(the hub), a relay through the broker to the device, a synced commit of its result (the
device), a relay back, and a synced commit of the result (the hub). Here those parts run
with nothing else: a bare aiohttp handler that commits one row and publishes the body,
a bare device (aiomqtt in its own process, as the agent is) that commits one row and
publishes a 200-byte result, and the handler's MQTT client committing that as it comes.
The same broker configuration, TLS and certificates as the hub's; SQLite in WAL with
`synchronous=FULL`, each database on a thread of its own as the stores keep theirs. No
inference (the model's invoke is some 10 µs), no validation, no bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sqlite3
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web

from outpost import tls, wire
from outpost.aio import cancel_until_done
from outpost.mqtt import NODELAY
from tests.bench.common import bare_broker, device_cert, make_hub
from tests.support import free_port

DEVICE = "dev-floor0000001"
RESULT_BYTES = 200  # about a vibration result's size on the wire
# Each task's moments, as the bench's PHASES name them: the POST answered, the device
# had it, the device's commit ended, the hub's commit of the result ended.
PHASES = ("submitted", "started", "finished", "stored")


class _Synced:
    """One SQLite database on a thread of its own: each `commit` a synced transaction."""

    def __init__(self, path: Path) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=path.stem)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS rows (n INTEGER PRIMARY KEY, body BLOB)")

    def _commit(self, body: bytes) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("INSERT INTO rows (body) VALUES (?)", (body,))

    async def commit(self, body: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._commit, body)

    def close(self) -> None:
        self._thread.shutdown()
        self._conn.close()


def _mqtt(port: int, context: ssl.SSLContext, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    )


def _device_main(port: int, ca: Path, cert: Path, key: Path, database: Path) -> None:
    """The bare device, in its own process: each task in, a synced row, a result out."""

    async def serve() -> None:
        db = _Synced(database)
        async with _mqtt(port, tls.client_context(ca, cert, key), DEVICE) as client:
            await client.subscribe(wire.down_topic(DEVICE, "tasks"), qos=1)
            await client.publish(wire.up_topic(DEVICE, "hello"), b"", qos=1)
            async for message in client.messages:
                started = time.time()
                await db.commit(bytes(message.payload))
                moments = json.dumps([started, time.time()]).encode()
                result = moments.ljust(RESULT_BYTES)  # its times, padded to a result's size
                await client.publish(wire.up_topic(DEVICE, "records"), result, qos=1)

    asyncio.run(serve())


async def one_task_floor(root: Path, count: int, body: dict[str, Any]) -> list[dict[str, float]]:
    """Seconds from each POST of `body` to the end of each of PHASES, `count` tasks one
    after another (on the wall clock, as the product's rows beside it and the device's
    process use)."""
    paths, config = make_hub(root)
    broker = bare_broker(paths, config)
    async with contextlib.AsyncExitStack() as stack:  # each step undone, last first
        await broker.start()
        stack.push_async_callback(broker.stop)
        cert, key = device_cert(paths, DEVICE, root / "certs")
        hub_db = _Synced(root / "hub.db")
        stack.callback(hub_db.close)
        hub_ctx = tls.client_context(paths.ca_cert, paths.client_cert, paths.client_key)
        link = await stack.enter_async_context(_mqtt(config.mqtt_port, hub_ctx, "outpost-hub"))
        await link.subscribe(wire.UP_WILDCARD, qos=1)
        device = multiprocessing.get_context("spawn").Process(
            target=_device_main,
            args=(config.mqtt_port, paths.ca_cert, cert, key, root / "device.db"),
            daemon=True,
        )
        device.start()
        stack.callback(_stop, device)
        stored: asyncio.Queue[tuple[float, float, float]] = asyncio.Queue()

        async def receive() -> None:
            async for message in link.messages:
                if message.topic.value.endswith("/records"):
                    payload = bytes(message.payload)
                    await hub_db.commit(payload)
                    started, finished = json.loads(payload)
                    stored.put_nowait((started, finished, time.time()))
                else:  # its hello: subscribed
                    stored.put_nowait((0.0, 0.0, 0.0))

        receiving = asyncio.create_task(receive())
        stack.push_async_callback(cancel_until_done, receiving)

        async def next_stored() -> tuple[float, float, float]:
            """The next commit's time; the receiver's own error if it failed."""
            getting = asyncio.ensure_future(stored.get())
            done, _ = await asyncio.wait(
                {getting, receiving}, timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            if getting in done:
                return getting.result()
            await cancel_until_done(getting)
            if receiving.done():
                receiving.result()  # raises what ended it
                raise RuntimeError("the floor's MQTT receiver ended")
            raise TimeoutError("the floor: no result stored within 60 s")

        pending: set[asyncio.Future[None]] = set()

        async def submit(request: web.Request) -> web.Response:
            body = await request.read()
            json.loads(body)
            await hub_db.commit(body)
            # Answered before its PUBACK comes back, as the hub answers.
            publish = asyncio.ensure_future(
                link.publish(wire.down_topic(DEVICE, "tasks"), body, qos=1)
            )
            pending.add(publish)
            publish.add_done_callback(pending.discard)
            return web.json_response({"ids": ["t"]}, status=202)

        await next_stored()  # the device's hello: it subscribed
        app = web.Application()
        app.router.add_post("/api/v1/tasks", submit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        port = free_port()
        server_ctx = tls.server_context(paths.server_cert, paths.server_key)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        took: list[dict[str, float]] = []
        for _ in range(count):
            posted = time.time()
            async with session.post(
                f"https://127.0.0.1:{port}/api/v1/tasks", json=body, ssl=client_ctx
            ) as reply:
                assert reply.status == 202, await reply.text()
                await reply.read()
            answered = time.time()
            moments = (answered, *await next_stored())
            took.append({name: at - posted for name, at in zip(PHASES, moments, strict=True)})
        return took


def _stop(device: multiprocessing.process.BaseProcess) -> None:
    if device.is_alive():
        device.kill()
    device.join(10)
