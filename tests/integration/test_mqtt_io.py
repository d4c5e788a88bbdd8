"""How the agent's and the hub's MQTT clients write and read (outpost/mqttwrite.py,
outpost/mqttmessages.py), on a real Mosquitto started with `broker-config`'s files."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import aiomqtt
import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub.config import HubConfig
from hub.mqtt.ingest import Ingest
from hub.mqtt.intake import DeviceIntake
from hub.mqtt.link import HubLink
from hub.paths import HubPaths, link_cn
from outpost import mqttwrite, wire
from outpost.aio import cancel_until_done
from outpost.mqttmessages import ENDED, Messages
from outpost.mqttwrite import write_at_once
from tests.integration.test_broker_config import (  # noqa: F401 - fixtures used by name
    Broker,
    _client,
    _context,
    _subscribe,
    broker,
    generated,
)
from tests.support import eventually

HOST = "127.0.0.1"
TIMEOUT_S = 30.0  # generous: the suite must pass on a machine 5x slower


async def _next(messages: Messages) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(messages), TIMEOUT_S)


@pytest.mark.parametrize(
    ("setup", "marked", "at_once"),
    [
        ("every", False, True),
        ("none", False, False),
        ("marked", True, True),
        ("marked", False, False),
    ],
    ids=["every-packet", "aiomqtt", "marked-packet", "unmarked-packet"],
)
async def test_a_publish_made_on_the_loop_is_written_before_the_call_returns(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    setup: str,
    marked: bool,
    at_once: bool,
) -> None:
    """The control ("none") is aiomqtt as it comes: the packet waits for the loop to
    register, poll and call its writer. The hub's client writes at once only what is
    published inside `at_once()` (its task assignments)."""
    topic = wire.up_topic("dev-a", "heartbeat")
    device = _client(broker, hub_paths, "dev-a")
    if setup != "none":
        write_at_once(device, only_marked=setup == "marked")
    reader = _client(broker, hub_paths, link_cn("r1"))
    async with reader, device:
        await _subscribe(reader, topic)
        paho = device._client
        with mqttwrite.at_once() if marked else contextlib.nullcontext():
            info = paho.publish(topic, b"beat", qos=1)  # as aiomqtt's publish calls it
        assert paho.want_write() is not at_once  # nothing left to write: it went
        message = await _next(Messages(reader))
        assert (message.topic.value, message.payload) == (topic, b"beat")
        assert info.rc == 0


def _small_buffered(broker: Broker, hub_paths: HubPaths) -> aiomqtt.Client:  # noqa: F811
    """The agent's client as `dev-a`, with a send buffer far smaller than a big message:
    a write of one takes only part of it."""
    device = aiomqtt.Client(
        HOST,
        broker.port,
        identifier="dev-a",
        tls_context=_context(hub_paths, "dev-a"),
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)],
    )
    write_at_once(device)
    return device


async def test_what_the_socket_does_not_take_at_once_goes_after_whole(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """A send buffer far smaller than the message: the write takes part of it, and the
    rest leaves through aiomqtt's writer, in order, after it."""
    topic = wire.up_topic("dev-a", "heartbeat")
    device = _small_buffered(broker, hub_paths)
    reader = _client(broker, hub_paths, link_cn("r1"))
    big = bytes(range(256)) * 400  # 100 KiB
    async with reader, device:
        await _subscribe(reader, topic)
        paho = device._client
        paho.publish(topic, big, qos=1)
        assert paho.want_write()  # only part of it went: the writer has the rest
        await device.publish(topic, b"after", qos=1)
        messages = Messages(reader)
        got = [(await _next(messages)).payload, (await _next(messages)).payload]
    assert got == [big, b"after"]


async def test_messages_are_read_in_order_and_the_end_of_the_connection_ends_the_reading(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    topic = wire.up_topic("dev-a", "heartbeat")
    reader = _client(broker, hub_paths, link_cn("r1"))
    device = _client(broker, hub_paths, "dev-a")
    async with reader, device:
        await _subscribe(reader, topic)
        for n in range(5):
            await device.publish(topic, b"%d" % n, qos=1)
        messages = Messages(reader)
        got = [(await _next(messages)).payload for _ in range(5)]
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert len(messages) == 0

        waiting = asyncio.create_task(anext(messages))
        await asyncio.sleep(0)  # let it wait: the reader is parked on the empty queue
        assert not waiting.done()
        # Another connection with the reader's CN takes its session over (the broker
        # names clients by CN): the broker closes the reader's connection.
        async with _client(broker, hub_paths, link_cn("r1")):
            with pytest.raises(aiomqtt.MqttError, match=ENDED):
                await asyncio.wait_for(waiting, TIMEOUT_S)


@pytest.mark.parametrize("at_once", [True, False])
async def test_a_write_that_fails_ends_the_connection_and_leaves_no_error_in_the_loop(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    at_once: bool,
) -> None:
    """The peer gone as a packet is written: the publish fails as it did with aiomqtt's
    writer (`at_once` False, the control), and nothing is handed to the loop for a
    socket paho has closed (an add_writer(-1), logged as an error)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    device = _client(broker, hub_paths, "dev-a")
    if at_once:
        write_at_once(device)
    try:
        async with device:

            def broken(data: bytes) -> int:
                raise BrokenPipeError(32, "Broken pipe")

            device._client._sock.send = broken  # type: ignore[method-assign, union-attr]
            with pytest.raises(aiomqtt.MqttError):
                await device.publish(wire.up_topic("dev-a", "heartbeat"), b"x", qos=1, timeout=2)
            assert device._disconnected.done()
            for _ in range(5):  # what the write left for the loop runs
                await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(before)
    assert errors == []


class Batches:
    """An ingest that keeps the payloads of each batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    async def handle_batch(self, batch: Sequence[tuple[str, bytes]]) -> None:
        self.batches.append([payload for _, payload in batch])

    def holding(self, wanted: set[bytes]) -> list[list[bytes]]:
        """The batches that hold any of `wanted`."""
        return [b for b in self.batches if wanted.intersection(b)]


async def test_the_hub_link_reads_every_packet_waiting_at_one_wake_up(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """Fifty heartbeats reach the hub's socket while its event loop is held: at the
    next wake-up the link reads them all (hub/mqtt/readahead.py) and hands them to the
    ingest in one batch. paho alone reads one packet a wake-up, a pass of the loop each
    (the hub's socket held 400-690 KB unread under load)."""
    ingest = Batches()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv5)
    device.tls_set_context(_context(hub_paths, "dev-a"))
    topic = wire.up_topic("dev-a", "heartbeat")
    async with _hub_link(broker, hub_paths, ingest) as link:
        try:
            await asyncio.to_thread(device.connect, HOST, broker.port)
            device.loop_start()  # its own thread: it sends while this loop is held below

            # Connected is not subscribed (the link probes its listing first): heartbeats
            # until one comes through.
            async def subscribed() -> bool:
                device.publish(topic, b"ready", qos=0)
                return bool(ingest.holding({b"ready"}))

            await eventually(subscribed, timeout=TIMEOUT_S, every=0.2, what="the subscription")
            assert link.client is not None
            sock = link.client._client.socket()
            assert sock is not None
            beats = {b"beat-%02d" % n + b"." * 250 for n in range(50)}
            # Held (not awaited): the heartbeats pile up in the link's socket meanwhile.
            for info in [device.publish(topic, beat, qos=0) for beat in sorted(beats)]:
                info.wait_for_publish(TIMEOUT_S)
            # The broker relaying them, the loop held on purpose: a poll until they are in,
            # past what their topics and payloads alone take (with each packet's header and
            # TLS record, more), and then until no more come for half a second. Released
            # at 50 x 256 bytes (about 40 of them), a slow machine's last few could come
            # after and make a batch of their own.
            least = sum(len(topic) + len(beat) for beat in beats)
            deadline = time.monotonic() + TIMEOUT_S
            unread, grew = _unread(sock), time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.01)
                if (now := _unread(sock)) != unread:
                    unread, grew = now, time.monotonic()
                elif unread >= least and time.monotonic() - grew >= 0.5:
                    break
            assert unread >= least

            async def all_handled() -> bool:
                return beats.issubset(p for b in ingest.batches for p in b)

            await eventually(all_handled, timeout=TIMEOUT_S, what="every heartbeat")
            (batch,) = ingest.holding(beats)  # one batch, whatever readiness beats came with
            assert beats.issubset(batch)
        finally:
            device.loop_stop()
            device.disconnect()


def _unread(sock: Any) -> int:
    """Bytes waiting in `sock`'s receive buffer (TLS records, not yet read)."""
    (count,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))
    return int(count)


@pytest.mark.parametrize("at_once", [True, False], ids=["assignment", "other"])
async def test_the_hub_link_writes_at_once_only_what_it_is_asked_to(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    at_once: bool,
) -> None:
    """A task assignment leaves before the rest of the request that made it runs; the
    hub's other packets wait for the loop's writer (at its rate, writing each at once
    cost the ingest 7-12 %)."""
    topic = wire.down_topic("dev-a", "tasks")
    device = _client(broker, hub_paths, "dev-a")
    async with _hub_link(broker, hub_paths) as link, device:
        await _subscribe(device, topic)
        paho = await _connected(link)
        publishing = asyncio.create_task(link.publish(topic, b"work", at_once=at_once))
        await asyncio.sleep(0)  # the publish queues its packet, then waits for the ack
        assert paho.want_write() is not at_once
        await asyncio.wait_for(publishing, TIMEOUT_S)
        message = await _next(Messages(device))
        assert (message.topic.value, message.payload) == (topic, b"work")


async def test_an_assignment_behind_packets_waiting_for_the_writer_takes_them_along(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """paho asks for the loop's writer only when none is asked for yet: an assignment
    queued behind another publish (or a read's PUBACKs) waited for it all the same."""
    topics = [wire.down_topic("dev-a", "cancel"), wire.down_topic("dev-a", "tasks")]
    device = _client(broker, hub_paths, "dev-a")
    async with _hub_link(broker, hub_paths) as link, device:
        for topic in topics:
            await _subscribe(device, topic)
        paho = await _connected(link)
        publishing = [
            asyncio.create_task(link.publish(topics[0], b"first")),  # asks for the writer
            asyncio.create_task(link.publish(topics[1], b"work", at_once=True)),
        ]
        await asyncio.sleep(0)  # both queued; the loop's writer has not run
        assert not paho.want_write(), "the assignment waited for the loop's writer"
        await asyncio.wait_for(asyncio.gather(*publishing), TIMEOUT_S)
        messages = Messages(device)
        got = [await _next(messages) for _ in topics]
        assert [(m.topic.value, m.payload) for m in got] == [
            (topics[0], b"first"),
            (topics[1], b"work"),
        ]  # in order
        # The writer the first asked for, added a pass later, is gone with nothing left
        # to write: kept, it was called on every pass, a core at 100 %, until the next
        # packet (the keepalive's, up to a minute later).
        assert not _writer_registered(paho)


@contextlib.asynccontextmanager
async def _hub_link(
    broker: Broker,  # noqa: F811 - the fixture's type
    hub_paths: HubPaths,
    ingest: Batches | None = None,
) -> AsyncIterator[HubLink]:
    """Replica r1's link to `broker`, running."""
    config = HubConfig(
        replica_id="r1",
        broker=f"mqtts://{HOST}:{broker.port}",
        db_url="postgresql://replicas.example/outpost",  # the link never reads it
    )
    link = HubLink(hub_paths, config, cast(Ingest, ingest or Batches()), DeviceIntake())
    running = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        await cancel_until_done(running)


async def _connected(link: HubLink) -> mqtt.Client:
    """The paho client of `link`, once connected."""

    async def connected() -> bool:
        return link.client is not None

    await eventually(connected, timeout=TIMEOUT_S, what="the link")
    assert link.client is not None
    return link.client._client


def _writer_registered(paho: mqtt.Client) -> bool:
    """Whether the event loop watches `paho`'s socket for writing."""
    sock = paho.socket()
    assert sock is not None
    key = asyncio.get_running_loop()._selector.get_map().get(sock.fileno())  # type: ignore[attr-defined]
    return key is not None and key.data[1] is not None  # (reader, writer) handles


async def test_a_closed_sockets_number_taken_by_a_new_connection_keeps_its_writer(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """paho closes its socket with a writer registered (a read error: the broker's TLS
    alert refusing an expired certificate), and the agent's next socket (its renewal's
    HTTPS connection) takes the same number at once. The writer's removal must not reach
    it: queued for a loop pass later, it removed the new connection's writer, and its
    connect was never seen (the renewal hung until its 30 s timeout)."""
    loop = asyncio.get_running_loop()
    topic = wire.up_topic("dev-a", "heartbeat")
    device = _small_buffered(broker, hub_paths)
    with contextlib.suppress(aiomqtt.MqttError):
        async with device:
            paho = device._client
            paho.publish(topic, bytes(100_000), qos=1)
            assert paho.want_write()  # the writer is registered for the rest
            sock = paho.socket()
            assert sock is not None
            number = sock.fileno()
            paho._sock_close()  # as paho does on a read error, on the loop's thread
            new, peer = socket.socketpair()
            try:
                assert new.fileno() == number  # the lowest free number: the one let go
                writable = asyncio.Event()
                loop.add_writer(new.fileno(), writable.set)
                try:
                    await asyncio.wait_for(writable.wait(), TIMEOUT_S)
                finally:
                    loop.remove_writer(new.fileno())
            finally:
                new.close()
                peer.close()
