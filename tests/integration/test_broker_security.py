"""The managed broker's door: mTLS only, certificates of our CA only, each device confined."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.identity import DevicePaths
from hub.app import Hub
from hub.fleet import pki
from outpost import files, tls, wire
from tests.conftest import Enroller
from tests.support import eventually

HELLO = wire.Hello(
    conn="c1",
    agent_version="test",
    profile="generic",
    heartbeat_interval=60.0,
    capabilities=wire.Capabilities(cores=1, memory_bytes=1, disk_bytes=1),
)


# MQTT 3.1.1 CONNECT, client id "test", keepalive 60 s, clean session.
CONNECT = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test"


async def _mqtt_connect_over_tls(hub: Hub, context: ssl.SSLContext) -> str:
    """Send a bare CONNECT over TLS; return "connack" or the TLS alert that ended it.

    With TLS 1.3 the server judges the client certificate after the handshake, so a
    refusal arrives as an alert on the first read rather than from the handshake.
    """
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", hub.config.mqtt_port, ssl=context
        )
    except ssl.SSLError as exc:
        return str(exc).lower()
    try:
        writer.write(CONNECT)
        await writer.drain()
        first = await asyncio.wait_for(reader.read(1), 5)
        return "connack" if first == b"\x20" else f"unexpected reply {first!r}"
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc).lower()
    finally:
        writer.close()


async def _contains(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


def _client(hub: Hub, context: ssl.SSLContext, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=identifier,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
    )


def _device_context(paths: DevicePaths) -> ssl.SSLContext:
    return tls.client_context(paths.ca_cert, paths.cert, paths.key)


def _hub_context(hub: Hub) -> ssl.SSLContext:
    p = hub.paths
    return tls.client_context(p.ca_cert, p.client_cert, p.client_key)


async def test_certificate_from_another_ca_cannot_connect(hub: Hub, tmp_path: Path) -> None:
    rogue_key, rogue_ca = pki.make_ca("Rogue CA")
    key = pki.new_ec_key()
    # Even with a CN that the ACL would trust, a foreign CA gets nowhere.
    issued = pki.issue(
        rogue_key, rogue_ca, common_name="outpost-hub", public_key=key.public_key(), days=1
    )
    files.write_new(tmp_path / "rogue.key", pki.key_pem(key))
    files.write_new(tmp_path / "rogue.crt", issued.pem)
    context = tls.client_context(hub.paths.ca_cert, tmp_path / "rogue.crt", tmp_path / "rogue.key")

    outcome = await _mqtt_connect_over_tls(hub, context)

    # The alert ("unknown ca") or a reset reaches us first, depending on timing; the
    # broker's log says why it closed the connection.
    assert outcome != "connack"
    log = hub.paths.broker_dir / "mosquitto.log"
    await eventually(
        lambda: _contains(log, "certificate verify failed"), what="the broker's reason"
    )


async def test_client_without_certificate_cannot_connect(hub: Hub) -> None:
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))

    outcome = await _mqtt_connect_over_tls(hub, context)

    # Depending on timing the alert ("certificate required") or a reset reaches us first;
    # the broker's log says why it closed the connection.
    assert outcome != "connack"
    log = hub.paths.broker_dir / "mosquitto.log"
    await eventually(
        lambda: _contains(log, "peer did not return a certificate"), what="broker's reason"
    )


async def test_enrolled_device_certificate_connects(hub: Hub, enroll_device: Enroller) -> None:
    """The control for the two refusals above: the same probe with a good certificate."""
    paths, _ = await enroll_device()
    assert await _mqtt_connect_over_tls(hub, _device_context(paths)) == "connack"


async def test_tls_below_1_2_is_refused(hub: Hub, enroll_device: Enroller) -> None:
    paths, _ = await enroll_device()
    context = _device_context(paths)
    # Let our side offer TLS 1.1 at all (OpenSSL's default security level forbids it),
    # so that the refusal we observe is the broker's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1

    outcome = await _mqtt_connect_over_tls(hub, context)

    assert outcome != "connack"
    log = hub.paths.broker_dir / "mosquitto.log"
    await eventually(lambda: _contains(log, "unsupported protocol"), what="the broker's reason")


async def test_plain_tcp_without_tls_cannot_connect(hub: Hub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.config.mqtt_port)
    try:
        writer.write(CONNECT)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(1), 5)
    except ConnectionError:
        reply = b""
    finally:
        writer.close()
    assert reply == b"", "the broker answered plain MQTT"


async def test_device_cannot_publish_into_another_devices_topics(
    hub: Hub, enroll_device: Enroller
) -> None:
    paths_a, a = await enroll_device()
    _, b = await enroll_device()

    async with _client(hub, _device_context(paths_a), a.device_id) as client:
        # Impersonation attempt: B's hello, sent with A's certificate.
        await client.publish(
            wire.up_topic(b.device_id, "hello"), wire.encode("hello", HELLO), qos=1
        )
        # Then a message A may send; once the hub has it, it would have had B's by now.
        await client.publish(
            wire.up_topic(a.device_id, "hello"), wire.encode("hello", HELLO), qos=1
        )

        async def a_online() -> bool:
            device = await hub.parts.store.device(a.device_id)
            return bool(device and device.online)

        await eventually(a_online, what="A's own hello at the hub")

    device_b = await hub.parts.store.device(b.device_id)
    assert device_b is not None
    assert not device_b.online, "the hub accepted a message written into B's topic by A"
    assert hub.parts.ingest.outcomes[("hello", "accepted")] == 1


async def test_device_cannot_read_another_devices_down_topic_or_anyones_up(
    hub: Hub, enroll_device: Enroller
) -> None:
    paths_a, a = await enroll_device()
    paths_b, b = await enroll_device()
    received: list[str] = []

    async with (
        _client(hub, _device_context(paths_a), a.device_id) as spy,
        _client(hub, _device_context(paths_b), b.device_id) as victim,
        _client(hub, _hub_context(hub), "outpost-hub-test") as hub_client,
    ):
        await spy.subscribe(wire.down_topic(b.device_id, "#"), qos=1)
        await spy.subscribe(wire.UP_WILDCARD, qos=1)
        await spy.subscribe(wire.down_topic(a.device_id, "#"), qos=1)

        await victim.publish(
            wire.up_topic(b.device_id, "hello"), wire.encode("hello", HELLO), qos=1
        )
        await hub_client.publish(wire.down_topic(b.device_id, "secret"), b"for B only", qos=1)
        # The marker, sent last on A's own down topic: when it arrives, anything
        # A could have received from the messages above would have arrived before it.
        await hub_client.publish(wire.down_topic(a.device_id, "marker"), b"done", qos=1)

        async def until_marker() -> None:
            async for message in spy.messages:
                received.append(message.topic.value)
                if message.topic.value.endswith("/marker"):
                    return

        await asyncio.wait_for(until_marker(), 15)

    assert received == [wire.down_topic(a.device_id, "marker")]


async def test_device_writes_only_the_contracts_kinds_and_the_hub_gets_no_retained_replay(
    hub: Hub, enroll_device: Enroller
) -> None:
    """Issue 15 item 11: the ACL let a device write anything under its `up/#`, retained;
    50,000 retained subtopics filled the broker's disk and were replayed at each start."""
    paths_a, a = await enroll_device()
    received: list[tuple[str, bool]] = []
    junk = [wire.up_topic(a.device_id, "junk"), f"{wire.up_topic(a.device_id, 'hello')}/deeper"]
    allowed = wire.up_topic(a.device_id, "hello")

    async with (
        _client(hub, _device_context(paths_a), a.device_id) as device,
        _client(hub, _hub_context(hub), "outpost-hub-test") as watcher,
    ):
        await watcher.subscribe(wire.UP_WILDCARD, qos=1)
        for topic in junk:
            await device.publish(topic, b"x" * 1000, qos=1, retain=True)
        await device.publish(allowed, wire.encode("hello", HELLO), qos=1, retain=True)

        async def until_allowed() -> None:
            async for message in watcher.messages:
                received.append((message.topic.value, message.retain))
                if message.topic.value == allowed:
                    return

        await asyncio.wait_for(until_allowed(), 15)
    assert received == [(allowed, False)], "a topic outside the contract reached the hub"

    # A new subscriber gets retained copies only of what the ACL let through (the hub's
    # own subscription asks for none: tests/fuzz/test_hostile_device.py restarts it).
    replayed: list[tuple[str, bool]] = []
    async with (
        _client(hub, _hub_context(hub), "outpost-hub-test-2") as late,
        _client(hub, _device_context(paths_a), a.device_id) as device,
    ):
        await late.subscribe(wire.UP_WILDCARD, qos=1)
        # A live message after the subscription: retained copies come before it.
        await device.publish(allowed, wire.encode("hello", HELLO), qos=1)

        async def until_live() -> None:
            async for message in late.messages:
                replayed.append((message.topic.value, message.retain))
                if not message.retain:
                    return

        await asyncio.wait_for(until_live(), 15)
    assert replayed == [(allowed, True), (allowed, False)]


def _legacy_hub_client(hub: Hub) -> aiomqtt.Client:
    """The hub's link as it was before it had a certificate of its own: a persistent
    session under the hub certificate's CN."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier="outpost-hub",
        tls_context=_hub_context(hub),
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        timeout=5,
    )


async def _queued_for_legacy_session(hub: Hub, device: aiomqtt.Client, topic: str) -> bool:
    """Leave a persistent session subscribed to `topic`; a device publishes while it is
    away; then come back and say whether the broker had kept the message for it."""
    async with _legacy_hub_client(hub) as legacy:
        await legacy.subscribe(topic, qos=1)
    await device.publish(topic, b"while away", qos=1)
    return await _session_had_queued(hub, device, topic)


async def _session_had_queued(hub: Hub, device: aiomqtt.Client, topic: str) -> bool:
    """Come back to the legacy session: whether "while away" came before a marker the
    device sends now (queued messages are delivered first)."""
    received: list[bytes] = []
    async with _legacy_hub_client(hub) as legacy:
        await legacy.subscribe(topic, qos=1)
        await device.publish(topic, b"marker", qos=1)

        async def until_marker() -> None:
            async for message in legacy.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)
                if message.payload == b"marker":
                    return

        await asyncio.wait_for(until_marker(), 10)
    return b"while away" in received


async def test_the_hub_ends_the_session_its_link_had_before_it_had_its_own_cn(
    hub: Hub, enroll_device: Enroller
) -> None:
    """A hub before `outpost-hub-link` kept a persistent session under `outpost-hub`;
    nobody resumes it, and the broker would queue every device message for it."""
    paths, identity = await enroll_device()
    topic = wire.up_topic(identity.device_id, "status")
    host, port = hub.config.broker_address
    async with _client(hub, _device_context(paths), identity.device_id) as device:
        # The control: left alone, such a session keeps what devices send.
        assert await _queued_for_legacy_session(hub, device, topic)
        async with _legacy_hub_client(hub) as legacy:
            await legacy.subscribe(topic, qos=1)
        await hub.parts.link._end_legacy_session(host, port)  # what the link does at each start
        await device.publish(topic, b"while away", qos=1)
        assert not await _session_had_queued(hub, device, topic)
