"""Drain: records/s from a real agent's store to the hub's database over mTLS MQTT (read,
batch, publish QoS 1, validate, store durably with the high-water mark, ack, delete),
beside a bare aiomqtt publisher sending the same messages through the same broker to a
bare subscriber, with the same number in flight."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import aiomqtt

from edge.enroll import enroll
from edge.identity import DevicePaths
from outpost import tls, wire
from outpost.mqtt import NODELAY
from tests.bench.common import RESULT, Result, make_hub, per_second, running_hub
from tests.local_api import LocalClient
from tests.support import PROFILES, AgentProcess, mint_token

N = 20_000
IN_FLIGHT = 4
PER_BATCH = 500


def _held(paths_db: Path) -> int:
    """Records the hub holds: its mark, as the records are numbered from 1 with none
    missing. Not `COUNT(*)`: counting tens of thousands of rows every 20 ms took a share
    of the cores the drain runs on (the count read every page of the table)."""
    with contextlib.closing(sqlite3.connect(f"file:{paths_db}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT MAX(hwm) FROM stream_marks WHERE stream = 'results'").fetchone()
    return int(row[0] or 0)


# The bench's settings: batches of 500 (about 110 KB of these records). The agent's
# defaults: up to 1,000 records and 200 KiB, from 64 KiB (about 290 of these records) up
# while the hub acknowledges quickly (edge/batchsize.py); 4 in flight either way.
TUNED = (
    f"[agent.sync]\nbatch_records = {PER_BATCH}\nin_flight = {IN_FLIGHT}\nbatch_bytes = 204800\n"
)


async def _ours(root: Path, settings: str) -> tuple[float, float]:
    agent = None
    async with running_hub(root / "hub") as hub:
        try:
            paths = hub.paths
            assert hub.parts.broker is not None
            device = DevicePaths(root / "device")
            await enroll(await mint_token(hub), device, PROFILES / "x86-gateway.toml")
            device.config.write_text(settings)
            await hub.parts.broker.stop()
            agent = AgentProcess(
                device.root, heartbeat_interval=5, log=root / "agent.log", log_level="info"
            )
            while not device.socket.exists():
                await asyncio.sleep(0.05)  # the benchmark's own wait for the socket
            client = LocalClient(device.socket)
            for _ in range(0, N, 1000):
                status, _ = await client.append("results", [RESULT] * 1000)
                assert status == 201
            per_record = (await client.status())["store"]["bytes_written_per_record"]
            await client.close()
            await hub.parts.broker.start()
            # Time the drain itself, from the first stored batch: the agent's reconnect
            # back-off after the outage is not part of it.
            while (first := await asyncio.to_thread(_held, paths.database)) == 0:
                await asyncio.sleep(0.01)  # the benchmark's own poll of the hub database
            start = time.perf_counter()
            while await asyncio.to_thread(_held, paths.database) < N:
                await asyncio.sleep(0.02)  # the benchmark's own poll of the hub database
            return per_second(N - first, time.perf_counter() - start), per_record
        finally:
            if agent is not None:
                agent.stop()


async def _bare(root: Path) -> float:
    from tests.bench.common import bare_broker, device_cert

    paths, config = make_hub(root / "bare")
    broker = bare_broker(paths, config)
    await broker.start()
    device_id = "dev-drainbench01"
    try:
        cert, key = device_cert(paths, device_id, root / "certs")
        dev_ctx = tls.client_context(paths.ca_cert, cert, key)
        hub_ctx = tls.client_context(paths.ca_cert, paths.client_cert, paths.client_key)
        payloads = []
        for first in range(1, N + 1, PER_BATCH):
            records = [(s, 1.0, RESULT) for s in range(first, first + PER_BATCH)]
            payloads.append(
                wire.encode(
                    "records",
                    wire.Records.pack("results", first, first + PER_BATCH - 1, records),
                )
            )
        topic = wire.up_topic(device_id, "records")
        async with (
            aiomqtt.Client(
                "127.0.0.1",
                config.mqtt_port,
                identifier="outpost-hub",
                tls_context=hub_ctx,
                socket_options=NODELAY,
            ) as sub,
            aiomqtt.Client(
                "127.0.0.1",
                config.mqtt_port,
                identifier=device_id,
                tls_context=dev_ctx,
                socket_options=NODELAY,
            ) as pub,
        ):
            await sub.subscribe(wire.UP_WILDCARD, qos=1)
            window = asyncio.Semaphore(IN_FLIGHT)

            async def send(payload: bytes) -> None:
                async with window:
                    await pub.publish(topic, payload, qos=1)

            async def receive() -> None:
                count = 0
                async for _ in sub.messages:
                    count += 1
                    if count == len(payloads):
                        return

            receiver = asyncio.create_task(receive())
            start = time.perf_counter()
            await asyncio.gather(*(send(p) for p in payloads))
            await asyncio.wait_for(receiver, 120)
            return per_second(N, time.perf_counter() - start)
    finally:
        await broker.stop()


def run(root: Path) -> list[Result]:
    ours, per_record = asyncio.run(_ours(root / "tuned", TUNED))
    defaults, _ = asyncio.run(_ours(root / "defaults", ""))
    bare = asyncio.run(_bare(root))
    return [
        Result(
            "drain: agent store -> hub database",
            ours,
            bare,
            "rec/s",
            f"raw = aiomqtt publisher -> subscriber, same messages, {IN_FLIGHT} in flight",
        ),
        Result(
            "drain, the agent's default sync settings",
            defaults,
            bare,
            "rec/s",
            "batches from 64 KiB up to 1,000 records or 200 KiB as acks allow, 4 in flight",
        ),
        Result(
            "drain: agent bytes written per record",
            per_record,
            None,
            "B",
            "while producing 20,000 results in calls of 1,000",
        ),
    ]
