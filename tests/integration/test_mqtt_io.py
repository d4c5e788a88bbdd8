"""How the agent's and the hub's MQTT clients write and read (outpost/mqttwrite.py,
outpost/mqttmessages.py), on a real Mosquitto started with `broker-config`'s files."""

from __future__ import annotations

import asyncio
import socket

import aiomqtt
import pytest

from hub.paths import HubPaths, link_cn
from outpost import wire
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

HOST = "127.0.0.1"
TIMEOUT_S = 30.0  # generous: the suite must pass on a machine 5x slower


async def _next(messages: Messages) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(messages), TIMEOUT_S)


@pytest.mark.parametrize("at_once", [True, False])
async def test_a_publish_made_on_the_loop_is_written_before_the_call_returns(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    at_once: bool,
) -> None:
    """The control (`at_once` False) is aiomqtt as it comes: the packet waits for the
    loop to register, poll and call its writer."""
    topic = wire.up_topic("dev-a", "heartbeat")
    device = _client(broker, hub_paths, "dev-a")
    if at_once:
        write_at_once(device)
    reader = _client(broker, hub_paths, link_cn("r1"))
    async with reader, device:
        await _subscribe(reader, topic)
        paho = device._client
        info = paho.publish(topic, b"beat", qos=1)  # as aiomqtt's publish calls it
        assert paho.want_write() is not at_once  # nothing left to write: it went
        message = await _next(Messages(reader))
        assert (message.topic.value, message.payload) == (topic, b"beat")
        assert info.rc == 0


async def test_what_the_socket_does_not_take_at_once_goes_after_whole(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """A send buffer far smaller than the message: the write takes part of it, and the
    rest leaves through aiomqtt's writer, in order, after it."""
    topic = wire.up_topic("dev-a", "heartbeat")
    device = aiomqtt.Client(
        HOST,
        broker.port,
        identifier="dev-a",
        tls_context=_context(hub_paths, "dev-a"),
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)],
    )
    write_at_once(device)
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
