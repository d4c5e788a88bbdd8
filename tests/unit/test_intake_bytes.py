"""The intake's bytes: a compressed batch costs its decompressed size (hub/mqtt/charge.py)
against the device's byte budget, and the queue is bounded in bytes, per device and in
all."""

from __future__ import annotations

import aiomqtt
import msgspec

from hub.mqtt import charge
from hub.mqtt.intake import DEVICE_QUEUED_BYTES, TOTAL_QUEUED_BYTES, Budget, DeviceIntake
from outpost import wire
from outpost.wire import packing

LIMIT = wire.MAX_PAYLOAD_BYTES


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _batch(records: int) -> wire.Records:
    body = msgspec.msgpack.encode({"k": "x" * 200})  # alike records: about 100:1 packed
    return wire.Records(
        stream="metrics",
        from_seq=1,
        to_seq=records,
        seqs=list(range(1, records + 1)),
        ts=[1.0] * records,
        bodies=[body] * records,
    )


def _message(device: str, kind: str, payload: bytes) -> aiomqtt.Message:
    return aiomqtt.Message(wire.up_topic(device, kind), payload, 1, False, 1, None)


def test_a_packed_batch_costs_its_decompressed_size_against_the_byte_budget() -> None:
    """Charged at 2 KB on the wire, a device could send 1,000 such batches a second
    (200 MB of records to check, about 86 % of the ingest); charged as its frame
    declares, no more than the byte budget's worth of records."""
    batch = _batch(1000)
    payload = packing.Packer(packing.ZSTD).pack(batch)
    unpacked = len(msgspec.msgpack.encode(batch))
    assert len(payload) * 50 < unpacked  # the premise: it compresses that well
    clock = Clock()
    budget = Budget(bytes_burst=10 * unpacked, bytes_rate=unpacked)
    intake = DeviceIntake(budget, clock=clock)
    for _ in range(100):
        intake.put_nowait(_message("dev-packer01", "packed", payload))
    assert intake.qsize() == 10  # the burst, in decompressed bytes
    assert intake.dropped == {("packed", "dropped:bytes"): 90}
    assert intake.queued_bytes() == 10 * unpacked
    clock.now += 3.0
    for _ in range(100):
        intake.put_nowait(_message("dev-packer01", "packed", payload))
    assert intake.qsize() == 13  # three seconds of the rate


def test_what_a_packed_batch_costs() -> None:
    batch = _batch(1000)
    payload = packing.Packer(packing.ZSTD).pack(batch)
    unpacked = len(msgspec.msgpack.encode(batch))
    assert charge.cost("packed", payload, LIMIT) == unpacked
    assert charge.cost("packed", payload, 100_000) == 100_000  # the ingest stops there
    assert charge.cost("records", payload, LIMIT) == len(payload)
    assert charge.cost("packed", b"\x81\xa1v\x01junk", LIMIT) == 8  # refused undecoded
    deep = b"\x81\xa4junk" + b"\x91" * 100_000 + b"\xc0"  # as deep as a device likes
    assert charge.cost("packed", deep, LIMIT) == len(deep)
    # A frame that declares no size could decompress to the limit: it costs that.
    streaming = packing.zstd.ZstdCompressor()  # unpledged: the header says no size
    undeclared = streaming.compress(msgspec.msgpack.encode(batch)) + streaming.flush()
    assert packing.zstd.get_frame_info(undeclared).decompressed_size is None
    data = wire.encode("packed", wire.Packed(encoding="zstd", data=undeclared))
    assert charge.cost("packed", data, LIMIT) == LIMIT


def test_a_device_queues_no_more_than_its_bytes() -> None:
    """Within its byte rate (32 x 256 KiB a second), a device queued 2,000 x 256 KiB =
    512 MiB while the ingest was slow; it queues at most DEVICE_QUEUED_BYTES now, and
    the rest is dropped as `queue` for it alone."""
    clock = Clock()
    intake = DeviceIntake(Budget(), clock=clock)
    payload = b"x" * LIMIT
    for _ in range(3000):
        clock.now += 1 / 32
        intake.put_nowait(_message("dev-bulky001", "records", payload))
    assert intake.qsize() == DEVICE_QUEUED_BYTES // LIMIT
    assert intake.queued_bytes() <= DEVICE_QUEUED_BYTES
    assert intake.dropped == {("records", "dropped:queue"): 3000 - intake.qsize()}
    intake.put_nowait(_message("dev-small001", "records", b"x" * 10))  # others still queue
    assert intake.qsize() == DEVICE_QUEUED_BYTES // LIMIT + 1
    intake.get_nowait()  # taking one makes room for one more
    intake.put_nowait(_message("dev-bulky001", "records", payload))
    assert intake.queued_bytes() == DEVICE_QUEUED_BYTES + 10


def test_the_whole_queue_holds_no_more_than_its_bytes() -> None:
    clock = Clock()
    intake = DeviceIntake(Budget(), clock=clock)
    payload = b"x" * LIMIT
    devices = [f"dev-{n:012d}" for n in range(2 * TOTAL_QUEUED_BYTES // DEVICE_QUEUED_BYTES)]
    for device in devices:
        for _ in range(DEVICE_QUEUED_BYTES // LIMIT):
            intake.put_nowait(_message(device, "records", payload))
    assert intake.queued_bytes() == TOTAL_QUEUED_BYTES
    assert intake.qsize() == TOTAL_QUEUED_BYTES // LIMIT
    assert sum(intake.dropped.values()) == intake.dropped[("records", "dropped:queue")]
    assert sum(intake.dropped.values()) == TOTAL_QUEUED_BYTES // LIMIT
    # A full intake is no device's doing: none of those drops counts toward a hold.
    assert {t.counted for t in intake.throttled()} == {0}
