"""Heartbeats through the hub (validate + registry write) against bare MQTT through the
same mTLS Mosquitto: QoS 1, ~200 B payloads, a window of 100 publishes in flight."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiomqtt

from outpost import tls, wire
from outpost.mqtt import NODELAY
from tests.bench.bench_codec import BEAT
from tests.bench.common import (
    Result,
    bare_broker,
    device_cert,
    make_hub,
    per_second,
    running_hub,
)

N = 5_000
WINDOW = 100
DEVICE = "dev-bench000001"


def _client(port: int, context: ssl.SSLContext, identifier: str) -> aiomqtt.Client:
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
        max_inflight_messages=WINDOW,
    )
    client.pending_calls_threshold = WINDOW + 1  # a full window is intended, not a leak
    return client


async def _publish_all(client: aiomqtt.Client, topic: str, payloads: list[bytes]) -> None:
    window = asyncio.Semaphore(WINDOW)

    async def one(payload: bytes) -> None:
        async with window:
            await client.publish(topic, payload, qos=1)

    await asyncio.gather(*(one(p) for p in payloads))


async def _bare(root: Path) -> float:
    paths, config = make_hub(root)
    broker = bare_broker(paths, config)
    await broker.start()
    try:
        cert, key = device_cert(paths, DEVICE, root / "certs")
        device_ctx = tls.client_context(paths.ca_cert, cert, key)
        hub_ctx = tls.client_context(paths.ca_cert, paths.client_cert, paths.client_key)
        topic = wire.up_topic(DEVICE, "heartbeat")
        payloads = [wire.encode("heartbeat", BEAT) for _ in range(N)]
        async with (
            _client(config.mqtt_port, hub_ctx, "outpost-hub") as sub,
            _client(config.mqtt_port, device_ctx, DEVICE) as pub,
        ):
            await sub.subscribe(wire.UP_WILDCARD, qos=1)

            async def receive() -> None:
                count = 0
                async for _ in sub.messages:
                    count += 1
                    if count == N:
                        return

            receiver = asyncio.create_task(receive())
            start = time.perf_counter()
            await _publish_all(pub, topic, payloads)
            await asyncio.wait_for(receiver, 120)
            return per_second(N, time.perf_counter() - start)
    finally:
        await broker.stop()


async def _through_hub(root: Path) -> float:
    async with running_hub(root) as hub:
        paths, config = hub.paths, hub.config
        cert, key = device_cert(paths, DEVICE, root / "certs")
        device_ctx = tls.client_context(paths.ca_cert, cert, key)
        topic = wire.up_topic(DEVICE, "heartbeat")
        payloads = [wire.encode("heartbeat", BEAT) for _ in range(N)]
        ingest = hub.parts.ingest
        async with _client(config.mqtt_port, device_ctx, DEVICE) as pub:
            start = time.perf_counter()
            await _publish_all(pub, topic, payloads)
            deadline = start + 300
            while ingest.outcomes[("heartbeat", "accepted")] < N:
                # A hub that lost some would keep a bench waiting for ever: say what it did.
                assert time.perf_counter() < deadline, dict(ingest.outcomes)
                await asyncio.sleep(0.01)  # the benchmark's own poll of the hub's counter
            return per_second(N, time.perf_counter() - start)


def run(root: Path) -> list[Result]:
    bare = asyncio.run(_bare(root / "bare"))
    ours = asyncio.run(_through_hub(root / "hub"))
    return [
        Result(
            "hub ingest: heartbeats validated and stored",
            ours,
            bare,
            "msg/s",
            "raw = same payloads, aiomqtt -> Mosquitto -> aiomqtt",
        )
    ]
