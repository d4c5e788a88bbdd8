"""The wire codec against bare msgpack (encode + validated decode of a heartbeat; the
hub's decode and check of a 500-record upload batch), and the hub's per-device intake
(budgets, fair queues) against a bare asyncio queue."""

from __future__ import annotations

import asyncio

import aiomqtt
import msgpack

from hub.mqtt.intake import Budget, DeviceIntake
from outpost import schema, wire
from tests.bench.common import RESULT, Result, median_time

N = 20_000
BATCH = 500
BATCHES = 200
BEAT = wire.Heartbeat(
    conn="a1b2c3d4e5f6",
    uptime_s=1234.5,
    heartbeat_interval=10.0,
    load=wire.Load(
        cpu_percent=12.5,
        memory_percent=40.1,
        disk_percent=55.0,
        rss_bytes=48 << 20,
        temperature_c=51.2,
    ),
)


def run() -> list[Result]:
    body = schema.dump(BEAT)
    envelope = {"v": 1, "kind": "heartbeat", "id": "0123456789abcdef", "ts": 1, "body": body}

    def bare() -> None:
        for _ in range(N):
            msgpack.unpackb(msgpack.packb(envelope), raw=False)

    def ours() -> None:
        for _ in range(N):
            wire.decode(
                wire.encode("heartbeat", BEAT), kinds=wire.UP_KINDS, expected_kind="heartbeat"
            )

    bare_us = median_time(bare) / N * 1e6
    ours_us = median_time(ours) / N * 1e6
    batch_ours, batch_bare = _batch()
    # 100 devices, each under its budget: what every message costs on its way in.
    messages = [
        aiomqtt.Message(
            wire.up_topic(f"dev-{n % 100:06d}", "heartbeat"), b"x" * 200, 1, False, 0, None
        )
        for n in range(N)
    ]

    def through(queue: asyncio.Queue[aiomqtt.Message]) -> None:
        for message in messages:
            queue.put_nowait(message)
        while not queue.empty():
            queue.get_nowait()

    unlimited = Budget(rate=1e12, burst=1e12, bytes_rate=1e12, bytes_burst=1e12, queued=N)
    intake_us = median_time(lambda: through(DeviceIntake(unlimited))) / N * 1e6
    queue_us = median_time(lambda: through(asyncio.Queue())) / N * 1e6
    return [
        Result(
            "hub intake: per message (100 devices)",
            intake_us,
            queue_us,
            "µs",
            "raw = bare asyncio.Queue put+get",
        ),
        Result(
            "codec: encode+decode heartbeat, per message",
            ours_us,
            bare_us,
            "µs",
            "raw = msgpack packb+unpackb, no validation",
        ),
        Result(
            f"codec: decode+check {BATCH}-record batch",
            batch_ours,
            batch_bare,
            "krec/s",
            "raw = msgpack unpackb of the batch and of each record",
        ),
    ]


def _batch() -> tuple[float, float]:
    """Records per second (thousands) the hub decodes and checks from one upload batch
    of realistic results, and bare msgpack unpacking the same bytes."""
    rows = [(seq, 1_700_000_000.0 + seq, RESULT) for seq in range(1, BATCH + 1)]
    payload = wire.encode("records", wire.Records.pack("results", 1, BATCH, rows))

    def bare() -> None:
        for _ in range(BATCHES):
            raw = msgpack.unpackb(payload, raw=False)
            for body in raw["body"]["bodies"]:
                msgpack.unpackb(body, raw=False)

    def ours() -> None:
        for _ in range(BATCHES):
            wire.decode(payload, kinds=wire.UP_KINDS, expected_kind="records")

    records = BATCH * BATCHES / 1000
    return records / median_time(ours), records / median_time(bare)
