"""The hub's side of store and forward, driven by a raw MQTT client with a device
certificate: batches stored once and acked cumulatively, gaps refused, marks moved past
evicted numbers, the records API, and no ack for what the database did not take."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiomqtt
import msgpack
import pytest

from edge.identity import DevicePaths, Identity
from hub.app import Hub
from hub.mqtt.acks import AckSet, Downlinks, LinkDownError
from outpost import tls, wire
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import eventually

# Low, so that a test can hold the database's write lock for longer than the hub waits.
BUSY_TIMEOUT_MS = 300
NO_ACK_WAIT_S = 1.0  # how long to listen for an ack that must not come


@pytest.fixture
def hub_settings() -> str:
    return f"db_busy_timeout_ms = {BUSY_TIMEOUT_MS}\n"


class Device:
    """A device's raw MQTT session, subscribed to its own acks."""

    def __init__(self, client: aiomqtt.Client, device_id: str) -> None:
        self.client = client
        self.device_id = device_id

    async def send(
        self,
        from_seq: int,
        to_seq: int,
        seqs: list[int] | None = None,
        stream: wire.Stream = "results",
    ) -> None:
        """Upload a batch covering from_seq..to_seq holding `seqs` (default: all of them)."""
        numbers = list(range(from_seq, to_seq + 1)) if seqs is None else seqs
        body = wire.Records.pack(
            stream, from_seq, to_seq, [(s, 1000.0 + s, {"n": s}) for s in numbers]
        )
        topic = wire.up_topic(self.device_id, "records")
        await self.client.publish(topic, wire.encode("records", body), qos=1)

    async def ack(self, timeout: float = 15.0) -> wire.Ack:
        """The next ack the hub sends this device."""
        message = await asyncio.wait_for(anext(self.client.messages), timeout)
        assert message.topic.value == wire.down_topic(self.device_id, "ack")
        envelope = wire.decode(message.payload, kinds=wire.DOWN_KINDS, expected_kind="ack")
        assert isinstance(envelope.body, wire.Ack)
        return envelope.body


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
        await client.subscribe(wire.down_topic(identity.device_id, "ack"), qos=1)
        yield Device(client, identity.device_id)


@pytest.fixture
async def device(hub: Hub, enroll_device: Enroller) -> AsyncIterator[Device]:
    paths, identity = await enroll_device()
    async with connected(hub, paths, identity) as d:
        yield d


async def held(hub: Hub, device_id: str, stream: str = "results") -> list[tuple[int, Any]]:
    """(seq, body) of every record the hub holds for the device's stream."""
    found = await hub.parts.store.records(device_id, stream, after=0, limit=100_000)
    return [(r.seq, r.body) for r in found]


def rows_in_database(hub: Hub, device_id: str) -> int:
    """Rows of the device in the records table, counted beside the hub, not through it."""
    uri = f"file:{hub.paths.database}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        (n,) = db.execute(
            "SELECT COUNT(*) FROM records WHERE device_id = ?", (device_id,)
        ).fetchone()
    return int(n)


def outcome(hub: Hub, name: str) -> int:
    return hub.parts.ingest.outcomes[("records", name)]


# ---------------------------------------------------------------------------- ingest


async def test_a_batch_is_stored_and_acked_with_its_mark(hub: Hub, device: Device) -> None:
    await device.send(1, 5)

    assert await device.ack() == wire.Ack(stream="results", hwm=5)
    assert await held(hub, device.device_id) == [(s, {"n": s}) for s in range(1, 6)]
    assert hub.parts.ingest.stored["results"] == 5


async def test_a_replayed_batch_is_stored_once_and_acked_again(hub: Hub, device: Device) -> None:
    await device.send(1, 5)
    assert (await device.ack()).hwm == 5

    await device.send(1, 5)

    assert await device.ack() == wire.Ack(stream="results", hwm=5)
    assert [seq for seq, _ in await held(hub, device.device_id)] == [1, 2, 3, 4, 5]
    assert rows_in_database(hub, device.device_id) == 5
    assert outcome(hub, "accepted") == 2
    assert hub.parts.ingest.stored["results"] == 5


async def test_an_overlapping_batch_stores_only_the_new_records(hub: Hub, device: Device) -> None:
    await device.send(1, 5)
    assert (await device.ack()).hwm == 5

    await device.send(3, 8)

    assert await device.ack() == wire.Ack(stream="results", hwm=8)
    assert [seq for seq, _ in await held(hub, device.device_id)] == list(range(1, 9))
    assert rows_in_database(hub, device.device_id) == 8
    assert hub.parts.ingest.stored["results"] == 8


async def test_a_batch_beyond_the_mark_is_refused_as_a_gap(hub: Hub, device: Device) -> None:
    await device.send(1, 5)
    assert (await device.ack()).hwm == 5

    await device.send(7, 9)

    assert await device.ack() == wire.Ack(stream="results", hwm=5, gap=True)
    assert [seq for seq, _ in await held(hub, device.device_id)] == [1, 2, 3, 4, 5]
    assert outcome(hub, "gap") == 1

    await device.send(6, 9)  # the resend from the mark + 1 the ack asked for
    assert await device.ack() == wire.Ack(stream="results", hwm=9)
    assert [seq for seq, _ in await held(hub, device.device_id)] == list(range(1, 10))


async def test_the_first_batch_must_start_at_one(hub: Hub, device: Device) -> None:
    await device.send(2, 3)

    assert await device.ack() == wire.Ack(stream="results", hwm=0, gap=True)
    assert await held(hub, device.device_id) == []


async def test_numbers_evicted_on_the_device_move_the_mark_past_them(
    hub: Hub, device: Device
) -> None:
    await device.send(1, 10, seqs=[1, 2, 7, 10])
    assert await device.ack() == wire.Ack(stream="results", hwm=10)

    await device.send(11, 14, seqs=[])  # everything in this range was evicted
    assert await device.ack() == wire.Ack(stream="results", hwm=14)

    await device.send(15, 15)
    assert await device.ack() == wire.Ack(stream="results", hwm=15)
    assert [seq for seq, _ in await held(hub, device.device_id)] == [1, 2, 7, 10, 15]


async def test_streams_have_their_own_marks(hub: Hub, device: Device) -> None:
    await device.send(1, 3, stream="results")
    assert await device.ack() == wire.Ack(stream="results", hwm=3)
    await device.send(1, 2, stream="metrics")
    assert await device.ack() == wire.Ack(stream="metrics", hwm=2)

    assert [seq for seq, _ in await held(hub, device.device_id, "metrics")] == [1, 2]
    assert await held(hub, device.device_id, "events") == []


async def test_a_hello_is_answered_with_the_mark_of_every_stream(hub: Hub, device: Device) -> None:
    await device.send(1, 4, stream="events")
    assert (await device.ack()).hwm == 4
    hello = wire.Hello(
        conn="c1",
        agent_version="test",
        profile="generic",
        heartbeat_interval=60.0,
        capabilities=wire.Capabilities(cores=2, memory_bytes=1 << 30, disk_bytes=1 << 34),
    )

    topic = wire.up_topic(device.device_id, "hello")
    await device.client.publish(topic, wire.encode("hello", hello), qos=1)

    marks = {ack.stream: ack for ack in [await device.ack() for _ in wire.STREAMS]}
    assert marks == {
        "results": wire.Ack(stream="results", hwm=0),
        "events": wire.Ack(stream="events", hwm=4),
        "metrics": wire.Ack(stream="metrics", hwm=0),
    }


async def test_batches_of_several_devices_keep_each_devices_order(
    hub: Hub, enroll_device: Enroller
) -> None:
    first = await enroll_device()
    second = await enroll_device()
    async with connected(hub, *first) as a, connected(hub, *second) as b:
        for start in range(1, 31, 3):  # queued together, they share ingest batches
            await a.send(start, start + 2)
            await b.send(start, start + 2)

        async def last_ack(d: Device) -> wire.Ack:
            ack = await d.ack()
            while ack.hwm < 30:
                assert not ack.gap
                ack = await d.ack()
            return ack

        assert await last_ack(a) == wire.Ack(stream="results", hwm=30)
        assert await last_ack(b) == wire.Ack(stream="results", hwm=30)
    for d in (a, b):
        assert [seq for seq, _ in await held(hub, d.device_id)] == list(range(1, 31))


async def test_a_seq_beyond_what_the_database_holds_is_rejected(hub: Hub, device: Device) -> None:
    # One past what a database integer holds: the contract bounds it, so only a device
    # that bypasses the encoder (a hostile one) sends it; written here by hand.
    big = 2**63
    envelope = {
        "v": wire.VERSION,
        "kind": "records",
        "id": "hostile-1",
        "ts": 1,
        "body": {
            "stream": "results",
            "from_seq": 1,
            "to_seq": big,
            "seqs": [1, big],
            "ts": [1.0, 2.0],
            "bodies": [msgpack.packb({"n": 1}), msgpack.packb({"n": 2})],
        },
    }
    topic = wire.up_topic(device.device_id, "records")
    await device.client.publish(topic, msgpack.packb(envelope), qos=1)

    async def rejected() -> bool:
        return hub.parts.ingest.outcomes[("records", "rejected:schema")] == 1

    await eventually(rejected, what="the oversized seq refused")
    await device.send(1, 2)
    assert await device.ack() == wire.Ack(stream="results", hwm=2)


# ---------------------------------------------------------------------------- faults


@contextlib.contextmanager
def write_locked(hub: Hub) -> Iterator[None]:
    """Hold the hub database's write lock, as another process could."""
    db = sqlite3.connect(hub.paths.database, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


async def test_no_ack_for_a_batch_the_database_could_not_take(hub: Hub, device: Device) -> None:
    await device.send(1, 3)
    assert (await device.ack()).hwm == 3

    with write_locked(hub):
        await device.send(4, 6)

        async def failed() -> bool:
            return outcome(hub, "error") == 1

        # The hub gave up only after its busy timeout: the lock outlived it.
        await eventually(failed, what="the store call to fail under the lock")
        with pytest.raises(TimeoutError):
            await device.ack(timeout=NO_ACK_WAIT_S)
        assert [seq for seq, _ in await held(hub, device.device_id)] == [1, 2, 3]

    await device.send(4, 6)  # the agent's resend after its ack timeout
    assert await device.ack() == wire.Ack(stream="results", hwm=6)
    assert [seq for seq, _ in await held(hub, device.device_id)] == list(range(1, 7))
    assert rows_in_database(hub, device.device_id) == 6
    assert hub.parts.link.state.connected.is_set(), "the failed write took the hub's link down"


# ---------------------------------------------------------------------------- API


async def test_records_api_pages_in_seq_order(hub: Hub, device: Device, api: ApiClient) -> None:
    await device.send(1, 5, seqs=[1, 2, 3, 5])
    assert (await device.ack()).hwm == 5
    token = await api.token("viewer")
    path = f"/api/v1/devices/{device.device_id}/records"

    seqs: list[int] = []
    query = {"stream": "results", "limit": "2"}
    while True:
        reply = await api.call("GET", path, token=token, params=query)
        assert reply.status == 200, reply.body
        seqs += [item["seq"] for item in reply.body["items"]]
        if reply.body["next_cursor"] is None:
            break
        query = {"stream": "results", "limit": "2", "cursor": reply.body["next_cursor"]}
    assert seqs == [1, 2, 3, 5]

    reply = await api.call("GET", path, token=token, params={"stream": "results", "after": "2"})
    assert reply.status == 200
    first = reply.body["items"][0]
    assert set(first) == {"seq", "ts", "body", "received_at"}
    assert (first["seq"], first["ts"], first["body"]) == (3, 1003.0, {"n": 3})
    assert [item["seq"] for item in reply.body["items"]] == [3, 5]
    assert reply.body["next_cursor"] is None

    reply = await api.call("GET", path, token=token, params={"stream": "events"})
    assert reply.body == {"items": [], "next_cursor": None}


async def test_streams_api_counts_records_and_marks(
    hub: Hub, device: Device, api: ApiClient
) -> None:
    await device.send(1, 10, seqs=[1, 2, 7, 10])
    assert (await device.ack()).hwm == 10
    await device.send(1, 3, stream="metrics")
    assert (await device.ack()).hwm == 3
    token = await api.token("viewer")

    reply = await api.call("GET", f"/api/v1/devices/{device.device_id}/streams", token=token)

    assert reply.status == 200
    assert reply.body == {
        "device_id": device.device_id,
        "items": [
            {"stream": "results", "records": 4, "hwm": 10},
            {"stream": "events", "records": 0, "hwm": 0},
            {"stream": "metrics", "records": 3, "hwm": 3},
        ],
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "query.stream"),
        ({"stream": "logs"}, "query.stream"),
        ({"stream": "results", "after": "-1"}, "query.after"),
        ({"stream": "results", "after": "x"}, "query.after"),
        ({"stream": "results", "after": "²"}, "query.after"),
        ({"stream": "results", "after": str(2**63)}, "query.after"),
        ({"stream": "results", "limit": "0"}, "query.limit"),
        ({"stream": "results", "cursor": "junk"}, "query.cursor"),
    ],
)
async def test_records_api_names_the_bad_parameter(
    hub: Hub, enroll_device: Enroller, api: ApiClient, query: dict[str, str], field: str
) -> None:
    _, identity = await enroll_device()
    token = await api.token("viewer")

    reply = await api.call(
        "GET", f"/api/v1/devices/{identity.device_id}/records", token=token, params=query
    )

    assert reply.status == 400
    assert reply.error["details"]["field"] == field


async def test_stream_routes_answer_404_for_an_unknown_device(api: ApiClient) -> None:
    token = await api.token("viewer")
    for path, query in (
        ("/api/v1/devices/dev-nosuch0001/records", {"stream": "results"}),
        ("/api/v1/devices/dev-nosuch0001/streams", {}),
    ):
        reply = await api.call("GET", path, token=token, params=query)
        assert reply.status == 404, path
        assert reply.error["code"] == "not_found"


async def test_binary_values_in_a_record_body_come_out_as_base64(
    hub: Hub, device: Device, api: ApiClient
) -> None:
    body = wire.Records.pack("events", 1, 1, [(1, 1.0, {"frame": b"\x00\xff", "ok": True})])
    topic = wire.up_topic(device.device_id, "records")
    await device.client.publish(topic, wire.encode("records", body), qos=1)
    assert (await device.ack()).hwm == 1

    reply = await api.call(
        "GET",
        f"/api/v1/devices/{device.device_id}/records",
        token=await api.token("viewer"),
        params={"stream": "events"},
    )

    assert reply.status == 200
    assert reply.body["items"][0]["body"] == {"frame": "AP8=", "ok": True}


# ---------------------------------------------------------------------------- metrics


async def test_metrics_count_stored_records_and_gaps(
    hub: Hub, device: Device, api: ApiClient
) -> None:
    await device.send(1, 4)
    assert (await device.ack()).hwm == 4
    await device.send(1, 4)
    assert (await device.ack()).hwm == 4
    await device.send(9, 9)
    assert (await device.ack()).gap

    reply = await api.call("GET", "/metrics", token=await api.token("viewer"))

    text = reply.body
    assert 'outpost_hub_records_stored_total{stream="results"} 4.0' in text
    assert 'outpost_hub_records_stored_total{stream="metrics"} 0.0' in text
    assert 'outpost_hub_messages_total{kind="records",outcome="accepted"} 2.0' in text
    assert 'outpost_hub_messages_total{kind="records",outcome="gap"} 1.0' in text
    assert 'outpost_hub_acks_total{outcome="sent"} 3.0' in text


# ---------------------------------------------------------------------------- acks


def _decoded(messages: list[tuple[str, bytes]]) -> list[tuple[str, wire.Ack]]:
    out = []
    for topic, payload in messages:
        body = wire.decode(payload, kinds=wire.DOWN_KINDS, expected_kind="ack").body
        out.append((topic, body))
    return out


def test_acks_coalesce_to_the_last_mark_per_device_and_stream() -> None:
    acks = AckSet()
    acks.add("dev-aaaaaa", "results", 5)
    acks.add("dev-bbbbbb", "results", 2)
    acks.add("dev-aaaaaa", "results", 9)
    acks.add("dev-aaaaaa", "events", 1)

    assert _decoded(acks.messages()) == [
        (wire.down_topic("dev-aaaaaa", "ack"), wire.Ack(stream="results", hwm=9)),
        (wire.down_topic("dev-bbbbbb", "ack"), wire.Ack(stream="results", hwm=2)),
        (wire.down_topic("dev-aaaaaa", "ack"), wire.Ack(stream="events", hwm=1)),
    ]


def test_a_gap_survives_coalescing_only_while_the_mark_has_not_covered_it() -> None:
    open_gap = AckSet()
    open_gap.add("dev-aaaaaa", "results", 5, refused_to=20)
    open_gap.add("dev-aaaaaa", "results", 10)  # a later batch moved the mark, not past 20
    closed_gap = AckSet()
    closed_gap.add("dev-aaaaaa", "results", 5, refused_to=20)
    closed_gap.add("dev-aaaaaa", "results", 20)

    assert _decoded(open_gap.messages())[0][1] == wire.Ack(stream="results", hwm=10, gap=True)
    assert _decoded(closed_gap.messages())[0][1] == wire.Ack(stream="results", hwm=20)


async def test_publishing_acks_never_raises_and_counts_what_did_not_go() -> None:
    sent: list[str] = []

    async def flaky(topic: str, payload: bytes) -> None:
        if "dev-bbbbbb" in topic:
            raise aiomqtt.MqttError("connection lost")
        if "dev-cccccc" in topic:
            raise LinkDownError("no link")
        sent.append(topic)

    acks = AckSet()
    for device_id in ("dev-aaaaaa", "dev-bbbbbb", "dev-cccccc"):
        acks.add(device_id, "results", 1)
    counts: collections.Counter[str] = collections.Counter()
    downlinks = Downlinks(flaky, counts)

    await downlinks.send(acks.messages())
    await downlinks.drain()
    await Downlinks(None, counts).send(acks.messages())

    assert sent == [wire.down_topic("dev-aaaaaa", "ack")]
    assert counts == {"sent": 1, "failed": 1, "dropped": 4}
    assert len(downlinks) == 0


async def test_acks_go_out_in_order_without_waiting_and_at_most_a_window_at_once() -> None:
    confirmed = asyncio.Event()  # the broker's PUBACKs, held back until the test says
    started: list[str] = []
    window_full = asyncio.Event()  # two publishes started

    async def slow_broker(topic: str, payload: bytes) -> None:
        started.append(topic)
        if len(started) == 2:
            window_full.set()
        await confirmed.wait()

    counts: collections.Counter[str] = collections.Counter()
    downlinks = Downlinks(slow_broker, counts, max_in_flight=2)
    first, second, third = (
        (wire.down_topic(device_id, "ack"), b"") for device_id in ("dev-a", "dev-b", "dev-c")
    )

    await downlinks.send([first, second])  # returns with both unconfirmed
    third_sent = asyncio.create_task(downlinks.send([third]))
    await asyncio.wait_for(window_full.wait(), 30)  # the publishes started
    assert not third_sent.done()  # the window is full: the ingest waits
    assert started == [first[0], second[0]]

    confirmed.set()
    await third_sent
    await downlinks.drain()
    assert started == [first[0], second[0], third[0]]
    assert counts == {"sent": 3}
