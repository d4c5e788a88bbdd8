"""Batch compression end to end: negotiated per connection between real agents and the
real hub over the real Mosquitto (mTLS), and the hub's refusals of packed batches sent
by a raw device client: an encoding it did not accept, a bomb, a corrupt frame."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiomqtt
import msgspec
import pytest

from edge.identity import DevicePaths, Identity
from hub.app import Hub
from outpost import tls, wire
from outpost.wire import packing
from outpost.wire.packing import zstd
from tests.conftest import Enroller
from tests.integration.test_store_forward import (
    hub_records,
    produce,
    wait_socket,
    write_agent_settings,
)
from tests.integration.test_store_forward_faults import hub_stop
from tests.local_api import LocalClient
from tests.support import AgentProcess, eventually

HUB_PLAIN = "compression = []\n"


class Device:
    """A device's raw MQTT session, subscribed to everything the hub sends it."""

    def __init__(self, client: aiomqtt.Client, device_id: str) -> None:
        self.client = client
        self.device_id = device_id

    async def publish(self, kind: str, payload: bytes) -> None:
        await self.client.publish(wire.up_topic(self.device_id, kind), payload, qos=1)

    async def hello(self, conn: str, offer: list[str]) -> None:
        hello = wire.Hello(
            conn=conn,
            agent_version="0.1.0",
            profile="generic",
            heartbeat_interval=10.0,
            capabilities=wire.Capabilities(cores=2, memory_bytes=1 << 30, disk_bytes=1 << 30),
            compression=offer,
        )
        await self.publish("hello", wire.encode("hello", hello))

    async def next(self, kind: str) -> wire.Body:
        """The next message of `kind` the hub sends this device (others are passed over)."""
        while True:
            got, body = await self.next_any()
            if got == kind:
                return body

    async def next_any(self, timeout: float = 15.0) -> tuple[str, wire.Body]:
        """The kind and body of the next message the hub sends this device."""
        message = await asyncio.wait_for(anext(self.client.messages), timeout)
        _, _, kind = wire.parse_topic(message.topic.value)
        envelope = wire.decode(message.payload, kinds=wire.DOWN_KINDS, expected_kind=kind)
        return kind, envelope.body


@contextlib.asynccontextmanager
async def connected(hub: Hub, paths: DevicePaths, identity: Identity) -> AsyncIterator[Device]:
    context = tls.client_context(paths.ca_cert, paths.cert, paths.key)
    async with aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=identity.device_id,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(wire.down_topic(identity.device_id, "#"), qos=1)
        yield Device(client, identity.device_id)


@pytest.fixture
async def device(hub: Hub, enroll_device: Enroller) -> AsyncIterator[Device]:
    paths, identity = await enroll_device()
    async with connected(hub, paths, identity) as d:
        yield d


def batch(first: int, last: int) -> wire.Records:
    rows = [(s, 1000.0 + s, {"n": s, "model": "vibration-anomaly"}) for s in range(first, last + 1)]
    return wire.Records.pack("results", first, last, rows)


def outcome(hub: Hub, kind: str, name: str) -> int:
    return hub.parts.ingest.outcomes[(kind, name)]


async def held(hub: Hub, device_id: str) -> list[int]:
    return [
        r.seq for r in await hub.parts.store.records(device_id, "results", after=0, limit=10_000)
    ]


# ------------------------------------------------------------ the hub, raw device client


async def test_a_hello_is_welcomed_with_the_encodings_the_hub_accepts(device: Device) -> None:
    await device.hello("c-one", ["zstd-dict9", "zstd-dict1", "zstd"])
    welcome = await device.next("welcome")
    assert welcome == wire.Welcome(conn="c-one", compression=["zstd-dict1", "zstd"])

    await device.hello("c-two", ["zstd"])  # each connection is answered for itself
    assert await device.next("welcome") == wire.Welcome(conn="c-two", compression=["zstd"])


@pytest.mark.parametrize("encoding", packing.ENCODINGS)
async def test_a_packed_batch_is_stored_once_and_acked(
    hub: Hub, device: Device, encoding: str
) -> None:
    packer = packing.Packer(encoding)
    await device.publish("packed", packer.pack(batch(1, 50)))
    assert await device.next("ack") == wire.Ack(stream="results", hwm=50)
    await device.publish("packed", packer.pack(batch(1, 50)))  # a resend
    assert await device.next("ack") == wire.Ack(stream="results", hwm=50)

    assert await held(hub, device.device_id) == list(range(1, 51))
    assert outcome(hub, "packed", "accepted") == 2
    assert outcome(hub, "records", "accepted") == 0


async def test_a_corrupt_packed_batch_is_refused_and_its_resend_loses_nothing(
    hub: Hub, device: Device
) -> None:
    good = msgspec.msgpack.decode(packing.Packer("zstd").pack(batch(1, 40)))
    corrupt = bytearray(good["body"]["data"])
    for i in range(12, len(corrupt) - 4, 5):
        corrupt[i] ^= 0xFF
    good["body"]["data"] = bytes(corrupt)
    await device.publish("packed", msgspec.msgpack.encode(good))
    # The device hears nothing and sends the batch again after its ack timeout.
    await device.publish("packed", packing.Packer("zstd").pack(batch(1, 40)))

    assert await device.next("ack") == wire.Ack(stream="results", hwm=40)
    assert outcome(hub, "packed", "rejected:malformed") == 1
    assert outcome(hub, "packed", "accepted") == 1
    assert await held(hub, device.device_id) == list(range(1, 41))


async def test_a_bomb_is_refused_and_the_next_batch_goes_on(
    hub: Hub, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    # 64 MiB of zeros in 2 KiB, its size not declared: the hub stops at its limit.
    compressor = zstd.ZstdCompressor(
        options={
            zstd.CompressionParameter.compression_level: 1,
            zstd.CompressionParameter.window_log: 17,
        }
    )
    data = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(64)) + compressor.flush()
    await device.publish("packed", wire.encode("packed", wire.Packed(encoding="zstd", data=data)))
    await device.publish("packed", packing.Packer("zstd-dict1").pack(batch(1, 3)))

    assert await device.next("ack") == wire.Ack(stream="results", hwm=3)
    assert outcome(hub, "packed", "rejected:oversized") == 1
    assert "zstd frame decompresses past 262144 bytes" in caplog.text
    assert await held(hub, device.device_id) == [1, 2, 3]


@pytest.mark.parametrize("hub_settings", [HUB_PLAIN])
async def test_a_hub_with_compression_off_welcomes_none_and_refuses_packed_batches(
    hub: Hub, device: Device
) -> None:
    await device.hello("c-one", ["zstd-dict1", "zstd"])
    assert await device.next("welcome") == wire.Welcome(conn="c-one", compression=[])
    for stream in wire.STREAMS:  # the hello's marks
        assert await device.next("ack") == wire.Ack(stream=stream, hwm=0)

    await device.publish("packed", packing.Packer("zstd").pack(batch(1, 5)))
    await device.publish("records", wire.encode("records", batch(1, 5)))
    assert await device.next("ack") == wire.Ack(stream="results", hwm=5)
    assert outcome(hub, "packed", "rejected:encoding") == 1
    assert await held(hub, device.device_id) == [1, 2, 3, 4, 5]


async def test_a_hello_without_an_offer_gets_no_welcome(device: Device) -> None:
    await device.hello("c-old", [])
    # Its marks come, and nothing else: an agent from before compression knows no welcome.
    kinds = [(await device.next_any())[0] for _ in wire.STREAMS]
    assert kinds == ["ack"] * len(wire.STREAMS)


# ------------------------------------------------------------------ agents end to end

NEW_AGENT = ""
PLAIN_AGENT = "[agent.sync]\ncompression = []\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("hub_settings", "agent_settings", "encoding"),
    [
        ("", NEW_AGENT, "zstd-dict1"),
        (HUB_PLAIN, NEW_AGENT, None),
        ("", PLAIN_AGENT, None),
    ],
    ids=["both-compress", "hub-off", "agent-off"],
)
async def test_every_record_arrives_once_compressed_only_when_both_sides_agree(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    agent_settings: str,
    encoding: str | None,
) -> None:
    assert hub.parts.broker is not None
    paths, identity = await enroll_device()
    write_agent_settings(paths, agent_settings)
    await hub.parts.broker.stop()  # made offline, drained as a backlog once it returns
    agent = agents(paths, heartbeat_interval=1.0)
    client = await wait_socket(paths, agent)
    try:
        confirmed = await produce(client, 3000, per_call=300)
        await hub.parts.broker.start()

        async def all_there() -> bool:
            return len(hub_records(hub, identity.device_id)) >= 3000

        await eventually(all_there, timeout=60, every=0.2, what="3,000 results at the hub")
        # A trickle once online: batches of a few records.
        confirmed += await produce(client, 20, per_call=2, start=3000)

        async def trickle_there() -> bool:
            return len(hub_records(hub, identity.device_id)) >= 3020

        await eventually(trickle_there, timeout=30, every=0.1, what="the trickle at the hub")
        records = hub_records(hub, identity.device_id)
        assert [seq for seq, _ in records] == list(range(1, 3021))
        assert [body["n"] for _, body in records] == confirmed
        sync = (await client.status())["sync"]
    finally:
        await client.close()

    assert sync["compression"] == encoding
    assert sync["records_sent"] >= 3020  # more after a resend, never fewer
    # The budget of the next batch (edge/batchsize.py): between its floor and the setting.
    assert 4 * 1024 <= sync["batch_bytes"] <= 200 * 1024
    packed = outcome(hub, "packed", "accepted")
    if encoding is None:
        assert packed == 0
        assert sync["packed_batches"] == 0
        assert sync["bytes_sent"] == sync["plain_bytes"]
    else:
        assert packed > 0
        assert sync["packed_batches"] > 0
        assert sync["bytes_sent"] < sync["plain_bytes"]
    assert not [k for k in hub.parts.ingest.outcomes if k[1].startswith("rejected")]


async def _produce_and_wait(hub: Hub, client: LocalClient, device_id: str, start: int) -> None:
    """Post 100 results in calls of 10, each once the hub holds the one before."""
    for first in range(start, start + 100, 10):
        await produce(client, 10, per_call=10, start=first)

        async def there(want: int = first + 10) -> bool:
            return len(hub_records(hub, device_id)) >= want

        await eventually(there, timeout=30, every=0.05, what=f"results up to {first + 10}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hub_settings", [HUB_PLAIN])
async def test_a_welcome_for_another_connection_is_ignored(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    write_agent_settings(paths, 'log_level = "debug"\n')
    agent = agents(paths, heartbeat_interval=1.0)
    client = await wait_socket(paths, agent)
    try:
        await _produce_and_wait(hub, client, identity.device_id, 0)
        # As the broker may deliver one queued for an earlier connection.
        stale = wire.Welcome(conn="0123456789ab", compression=["zstd-dict1", "zstd"])
        topic = wire.down_topic(identity.device_id, "welcome")
        await hub.parts.link.publish(topic, wire.encode("welcome", stale))

        async def heard() -> bool:
            return "ignored a welcome for connection 0123456789ab" in agent.output()

        await eventually(heard, timeout=10, what="the agent to read the stale welcome")
        await _produce_and_wait(hub, client, identity.device_id, 100)
        sync = (await client.status())["sync"]
    finally:
        await client.close()
    assert sync["compression"] is None
    assert sync["packed_batches"] == 0
    assert [seq for seq, _ in hub_records(hub, identity.device_id)] == list(range(1, 201))


@pytest.mark.timeout(180)
async def test_a_new_connection_starts_plain_until_its_own_welcome(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    agent = agents(paths, heartbeat_interval=1.0)
    client = await wait_socket(paths, agent)
    second_task = None
    try:
        await _produce_and_wait(hub, client, identity.device_id, 0)
        assert (await client.status())["sync"]["compression"] == "zstd-dict1"
        assert outcome(hub, "packed", "accepted") > 0

        # The hub comes back with compression off: the agent's next connection must not
        # carry on with the last one's encoding (its packed batches would be refused).
        await hub_stop(hub)
        second = Hub(hub.paths, msgspec.structs.replace(hub.config, compression=[]))
        second_task = asyncio.create_task(second.run(), name="second-hub")
        await asyncio.wait_for(second.ready.wait(), 20)

        async def reconnected() -> bool:
            return (await client.status())["sync"]["compression"] is None

        await _produce_and_wait(second, client, identity.device_id, 100)
        assert await reconnected()
        assert [seq for seq, _ in hub_records(second, identity.device_id)] == list(range(1, 201))
        assert outcome(second, "packed", "rejected:encoding") == 0
        assert outcome(second, "packed", "accepted") == 0
    finally:
        await client.close()
        if second_task is not None:
            second_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await second_task
