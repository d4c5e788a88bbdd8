"""Link: bytes per record on the wire and the drain rate, with batch compression and
without, in the same run: the demo's records (`scripts/demo_records.py`: the producer's
readings, flagged inferences and task results of the shipped models, roll-ups) drained
by a real agent from its store to a real hub over the managed Mosquitto (mTLS).

Bytes are counted on the wire as the MQTT PUBLISH payloads of the device's `records` and
`packed` messages, as the broker delivered them to a second subscriber beside the hub
(MQTT, TLS and TCP headers not counted: about 50 bytes a message for the topic, packet id
and fixed header); each message is decoded to count the results records it carries. The
raw limit is the same records sent plain (msgpack, compression off on the agent).

Two phases per mode: a backlog made offline (the demo's first 6,000 records, four times
over) and drained when the link returns (batches of up to 500 records), then a trickle
while online: each record posted as the demo's programs post them (the producer's 5
readings at once, each flagged inference and task result alone), the next call once the
hub holds the last (batches of 1 to 5). Last, the codec alone on batches of 1, 10, 100
and 500 records, with and without the dictionary.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.enroll import enroll
from edge.identity import DevicePaths
from hub.paths import HubPaths
from outpost import tls, wire
from outpost.mqtt import NODELAY
from outpost.wire import packing
from scripts.demo_records import Row, demo_rows, records_batch
from tests.bench.common import Result, per_second, running_hub
from tests.local_api import LocalClient
from tests.support import PROFILES, AgentProcess, mint_token

BACKLOG = 24_000  # records made offline: the demo's 6,000 four times over
DEMO_ROWS = 6000
TRICKLE_SECONDS = 40  # simulated seconds of the online trickle (about 9 records each)
PER_BATCH = 500
IN_FLIGHT = 4
SIZES = (1, 10, 100, 500)  # batch sizes of the codec-only figures


@dataclass
class Tally:
    """What the observer saw of the results stream: payload bytes, records, messages."""

    bytes: int = 0
    records: int = 0
    messages: int = 0
    packed: int = 0


class Observer:
    """A second subscriber to the device's `up` topics, counting what crosses the link.

    It connects with the hub's tool certificate (the hub's link has one of its own) and
    a session the broker keeps, so that it misses nothing sent while it is away."""

    def __init__(self, port: int, paths: HubPaths, device_id: str) -> None:
        self._port = port
        self._paths = paths
        self._topic = f"{wire.TOPIC_PREFIX}/{device_id}/up/#"
        self.tally = Tally()
        self.seen = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[aiomqtt.Client]:
        paths = self._paths
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        async with aiomqtt.Client(
            "127.0.0.1",
            self._port,
            identifier="outpost-hub",
            tls_context=tls.client_context(paths.ca_cert, paths.client_cert, paths.client_key),
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            socket_options=NODELAY,
        ) as client:
            await client.subscribe(self._topic, qos=1)
            yield client

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            _, _, kind = wire.parse_topic(message.topic.value)
            if kind not in ("records", "packed"):
                continue
            body = wire.decode(payload, kinds=wire.UP_KINDS, expected_kind=kind).body
            if isinstance(body, wire.Packed):
                body = packing.unpack(body, accepts=packing.ENCODINGS, max_bytes=1 << 20)
                self.tally.packed += 1
            if body.stream == "results":
                self.tally.bytes += len(payload)
                self.tally.records += len(body.seqs)
                self.tally.messages += 1
                self.seen.set()

    async def until(self, records: int) -> Tally:
        """The tally once it counts `records` results records."""
        while self.tally.records < records:
            self.seen.clear()
            await asyncio.wait_for(self.seen.wait(), 60)
        return Tally(**vars(self.tally))


@dataclass(frozen=True)
class Run:
    """One mode's figures."""

    backlog: Tally
    trickle: Tally
    rate: float  # backlog records/s into the hub's database


def _held(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM records WHERE stream = 'results'").fetchone()
    return int(n)


def _postable(body: dict[str, Any]) -> dict[str, Any]:
    """A record as a local program may post it: the local API keeps kind "task" for the
    agent's own task runner, so task results go as kind "work" (as long, same shape)."""
    return {**body, "kind": "work"} if body.get("kind") == "task" else body


def _calls(rows: list[Row]) -> list[list[dict[str, Any]]]:
    """The rows as the demo's programs post them: the producer's readings of one second
    together, every other record alone."""
    calls: list[list[dict[str, Any]]] = []
    for _, body in rows:
        if "source" in body and calls and "source" in calls[-1][-1]:
            calls[-1].append(body)
        else:
            calls.append([_postable(body)])
    return calls


async def _drain(root: Path, backlog: list[Row], trickle: list[Row], offer: list[str]) -> Run:
    agent = None
    async with running_hub(root / "hub") as hub:
        try:
            assert hub.parts.broker is not None
            device = DevicePaths(root / "device")
            identity = await enroll(await mint_token(hub), device, PROFILES / "x86-gateway.toml")
            device.config.write_text(
                f"[agent.sync]\nbatch_records = {PER_BATCH}\nin_flight = {IN_FLIGHT}\n"
                f"batch_bytes = 204800\ncompression = {msgspec.json.encode(offer).decode()}\n"
            )
            paths = hub.paths
            observer = Observer(hub.config.mqtt_port, paths, identity.device_id)
            async with observer.connected():  # its session keeps what comes while it is away
                pass
            await hub.parts.broker.stop()  # the backlog is made offline
            agent = AgentProcess(
                device.root, heartbeat_interval=5, log=root / "agent.log", log_level="info"
            )
            while not device.socket.exists():
                await asyncio.sleep(0.05)  # the benchmark's own wait for the socket
            client = LocalClient(device.socket)
            for call in _calls(backlog):
                status, _ = await client.append("results", call)
                assert status == 201
            await hub.parts.broker.start()
            async with observer.connected() as watcher:
                watching = asyncio.create_task(observer.run(watcher))
                # Time the drain from the first stored batch: the agent's reconnect
                # back-off after the outage is not part of it.
                while (first := await asyncio.to_thread(_held, paths.database)) == 0:
                    await asyncio.sleep(0.01)  # the benchmark's own poll of the hub database
                start = time.perf_counter()
                while await asyncio.to_thread(_held, paths.database) < len(backlog):
                    await asyncio.sleep(0.005)  # the benchmark's own poll of the hub database
                rate = per_second(len(backlog) - first, time.perf_counter() - start)
                drained = await observer.until(len(backlog))
                expected = len(backlog)
                for call in _calls(trickle):
                    status, _ = await client.append("results", call)
                    assert status == 201
                    expected += len(call)
                    while await asyncio.to_thread(_held, paths.database) < expected:
                        await asyncio.sleep(0.002)  # the benchmark's own poll: one at a time
                online = await observer.until(expected)
                watching.cancel()
            await client.close()
        finally:
            if agent is not None:
                agent.stop()
    trickle_tally = Tally(
        online.bytes - drained.bytes,
        online.records - drained.records,
        online.messages - drained.messages,
        online.packed - drained.packed,
    )
    return Run(drained, trickle_tally, rate)


def _codec(rows: list[Row]) -> list[Result]:
    """Bytes per record of batches of each size, packed with each encoding, against the
    same batches as plain `records` messages; and the time to pack and unpack."""
    results = []
    for size in SIZES:
        batches = [
            records_batch(rows[i : i + size], 1 + i)
            for i in range(0, min(len(rows) - size + 1, 100 * size), size)
        ]
        count = size * len(batches)
        plain = sum(len(wire.encode("records", b)) for b in batches) / count
        for encoding in packing.ENCODINGS:
            packer = packing.Packer(encoding)
            packed = sum(len(packer.pack(b)) for b in batches) / count
            results.append(
                Result(
                    f"link codec: {size}-record batch, {encoding}",
                    packed,
                    plain,
                    "B/rec",
                    "raw = the same batch as a plain records message",
                )
            )
    batch = records_batch(rows[:500], 1)
    for encoding in packing.ENCODINGS:
        packer = packing.Packer(encoding)
        plain_s = _median_s(lambda: wire.decode(wire.encode("records", batch), kinds=wire.UP_KINDS))

        def round_trip(packer: packing.Packer = packer) -> None:
            body = wire.decode(packer.pack(batch), kinds=wire.UP_KINDS).body
            packing.unpack(body, accepts=packing.ENCODINGS, max_bytes=1 << 20)

        results.append(
            Result(
                f"link codec: pack + unpack 500, {encoding}",
                _median_s(round_trip) / 500 * 1e6,
                plain_s / 500 * 1e6,
                "µs/rec",
                f"level {packing.LEVEL}; raw = encode + decode of the plain records message",
            )
        )
    return results


def _median_s(fn: Any, repeat: int = 50) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(root: Path) -> list[Result]:
    rows = demo_rows(DEMO_ROWS + TRICKLE_SECONDS * 12, seed=3)
    # Four times over (zstd remembers nothing from one batch to the next, so repeats
    # compress as the first time): a drain long enough to time.
    backlog = rows[:DEMO_ROWS] * (BACKLOG // DEMO_ROWS)
    trickle_rows = [
        r for r in rows[DEMO_ROWS:] if r[0] < rows[DEMO_ROWS - 1][0] + TRICKLE_SECONDS + 1
    ]
    # Two rounds in alternating order, each drain on a hub of its own: on a shared machine
    # a burst of other work then lands on both sides of the rate's ratio, not on one.
    offers = {"packed": list(packing.ENCODINGS), "plain": []}
    runs: dict[str, list[Run]] = {"packed": [], "plain": []}
    for round_, order in enumerate((("plain", "packed"), ("packed", "plain"))):
        for mode in order:
            folder = root / f"{mode}-{round_}"
            runs[mode].append(asyncio.run(_drain(folder, backlog, trickle_rows, offers[mode])))
    packed, plain = runs["packed"][-1], runs["plain"][-1]  # bytes: the same each round
    assert plain.backlog.packed == plain.trickle.packed == 0
    assert packed.backlog.packed > 0
    first = packing.ENCODINGS[0]

    def per_record(t: Tally) -> float:
        return t.bytes / t.records

    return [
        Result(
            f"link: backlog drained, B/rec on the wire ({first})",
            per_record(packed.backlog),
            per_record(plain.backlog),
            "B/rec",
            f"{packed.backlog.records} records in {packed.backlog.messages} messages; "
            "raw = the same records plain (msgpack)",
        ),
        Result(
            f"link: online trickle, B/rec on the wire ({first})",
            per_record(packed.trickle),
            per_record(plain.trickle),
            "B/rec",
            f"{packed.trickle.records} records in {packed.trickle.messages} messages "
            f"({packed.trickle.packed} packed); raw = the same records plain",
        ),
        Result(
            "link: backlog drain rate, compressed vs plain",
            statistics.mean(r.rate for r in runs["packed"]),
            statistics.mean(r.rate for r in runs["plain"]),
            "rec/s",
            "agent store -> hub database, mean of 2 alternating rounds; raw = the same "
            "drain with compression off",
        ),
        *_codec(demo_rows(3000, seed=5)),
    ]
