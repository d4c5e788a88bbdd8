"""Assignments the broker keeps for a device that is away expire: published with an MQTT 5
message expiry of the hub's accept timeout, after which the hub counts them lapsed and
gives the task to another device. Before, a device back hours later ran what its
persistent session had kept (a day), work long given back. Real Mosquitto, a real
device certificate, the hub's own publish path."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.identity import DevicePaths
from hub.app import Hub
from outpost import tls, wire
from tests.conftest import Enroller


def _device_session(hub: Hub, paths: DevicePaths, device_id: str) -> aiomqtt.Client:
    """A device's persistent session, as the agent opens one (edge/session.py)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=device_id,
        tls_context=tls.client_context(paths.ca_cert, paths.cert, paths.key),
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        timeout=10,
    )


async def test_an_assignment_kept_for_an_absent_device_expires(
    hub: Hub, enroll_device: Enroller
) -> None:
    paths, identity = await enroll_device()
    device_id = identity.device_id
    topic = wire.down_topic(device_id, "tasks")
    async with _device_session(hub, paths, device_id) as device:
        await device.subscribe(topic, qos=1)
    # Away: the broker keeps what is published for the session.
    assert hub.parts.link is not None
    await hub.parts.link.publish(topic, b"stale", expiry_s=1)  # as the dispatcher sends
    await hub.parts.link.publish(topic, b"kept")  # the control: no expiry
    await asyncio.sleep(2.5)  # measured: past the one with an expiry (not a sync point)

    received: list[bytes] = []
    started = time.monotonic()
    async with _device_session(hub, paths, device_id) as device:
        await device.subscribe(topic, qos=1)

        async def until_kept() -> None:
            async for message in device.messages:
                received.append(bytes(message.payload))
                if received[-1] == b"kept":
                    return

        await asyncio.wait_for(until_kept(), 30)
    assert received == [b"kept"], (received, time.monotonic() - started)
