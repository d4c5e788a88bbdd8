"""The wire codec (encode + validated decode of a heartbeat) against bare msgpack."""

from __future__ import annotations

import dataclasses

import msgpack

from outpost import wire
from tests.bench.common import Result, median_time

N = 20_000
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
    body = dataclasses.asdict(BEAT)
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
    return [
        Result(
            "codec: encode+decode heartbeat, per message",
            ours_us,
            bare_us,
            "µs",
            "raw = msgpack packb+unpackb, no validation",
        )
    ]
