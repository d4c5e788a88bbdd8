"""A device that keeps flooding is held off: its connection ended, its reconnections
refused while the hold lasts, and let in again after it; an honest device beside it is
untouched. The flooder picks another client id than its own, as an attacker would: the
broker names clients by their certificate's CN, so the hub can still end its session.

Issue 15 item 11: "past a threshold disconnected and held off by taking over its
session".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from typing import Any

import aiomqtt
import pytest

from edge.identity import DevicePaths
from hub.app import Hub
from hub.fleet import revocation
from outpost import tls, wire
from outpost.aio import taken
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import eventually

HOLD_S = 10.0  # long enough to look at the hold on a slow machine
JUNK = b"\x81\xa1v\x01" + b"x" * 200  # not a valid envelope: dropped or refused alike


@pytest.fixture
def hub_settings() -> str:
    # A small budget and threshold, so a short flood goes past them; a short hold.
    return (
        "device_msgs_per_s = 50.0\ndevice_msgs_burst = 100\n"
        f"device_hold_drops = 500\ndevice_hold_s = {HOLD_S}\n"
    )


def _context(paths: DevicePaths) -> ssl.SSLContext:
    return tls.client_context(paths.ca_cert, paths.cert, paths.key)


def _client(hub: Hub, paths: DevicePaths, identifier: str, timeout: float = 10) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=identifier,
        tls_context=_context(paths),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=timeout,
    )


async def _leave(client: aiomqtt.Client) -> None:
    """Leave a connection the broker may have ended: aiomqtt's `__aexit__` then returns
    at once, leaving the disconnection's error unread, which asyncio reports as a
    "Future exception was never retrieved" when the future is collected."""
    with contextlib.suppress(aiomqtt.MqttError):
        await client.__aexit__(None, None, None)
    taken(client._disconnected)  # aiomqtt's own future


async def _refusal(hub: Hub, paths: DevicePaths) -> str:
    """Open TLS with the device's certificate and wait for the broker's verdict (with TLS
    1.3 it comes at the first read): the alert's text, or what happened instead."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", hub.config.mqtt_port, ssl=_context(paths)
        )
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    try:
        data = await asyncio.wait_for(reader.read(1), 15)
        return f"not refused: {data!r}"
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        return repr(exc)
    finally:
        writer.close()


async def _connects(hub: Hub, paths: DevicePaths) -> bool:
    try:
        async with _client(hub, paths, "door-probe"):
            return True
    except aiomqtt.MqttError:
        return False


async def test_a_flooding_device_is_held_off_and_let_in_again(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    flooder_paths, flooder = await enroll_device()
    honest_paths, honest = await enroll_device()
    viewer = await api.token("viewer")

    async with _client(hub, honest_paths, honest.device_id) as honest_client:
        # An attacker's client id, not its device id: the takeover must still find it.
        # (A short timeout: leaving a connection the broker ended waits for it.)
        flood = _client(hub, flooder_paths, "not-my-device-id", timeout=2)
        ended = None
        await flood.__aenter__()
        try:
            topic = wire.up_topic(flooder.device_id, "heartbeat")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    for _ in range(200):
                        await flood.publish(topic, JUNK, qos=0)
                    await flood.publish(topic, JUNK, qos=1)  # waits: paces the flood
                except aiomqtt.MqttError as exc:
                    ended = exc
                    break
        finally:
            await _leave(flood)
        assert ended is not None, "the flooder's connection was never ended"

        # Held: named with the hold's end, counted, and its certificate refused.
        reply = await api.call("GET", "/api/v1/throttled", token=viewer)
        assert reply.status == 200, reply.body
        (item,) = reply.body["items"]
        assert item["device_id"] == flooder.device_id
        assert item["dropped_last_minute"] >= 500
        assert item["held_until"] is not None
        assert item["held_until"] > time.time() - 1
        metrics = (await api.call("GET", "/metrics", token=viewer)).body
        assert re.search(r"^outpost_hub_device_holds_total 1\.0$", metrics, re.M), metrics
        assert re.search(r"^outpost_hub_devices_held 1\.0$", metrics, re.M)
        refused = await _refusal(hub, flooder_paths)
        assert "REVOKED" in refused.upper(), refused

        # The honest device beside it: still connected, still heard, never held.
        await honest_client.publish(wire.up_topic(honest.device_id, "status"), b"still here", qos=1)
        assert honest.device_id not in hub.parts.holds.held

    # After the hold, the same certificate connects again (the probe above was sound).
    async def let_in() -> bool:
        return await _connects(hub, flooder_paths)

    await eventually(let_in, timeout=HOLD_S + 30, what="the flooder let in after its hold")
    assert hub.parts.holds.held == {}
    device = await api.call("GET", f"/api/v1/devices/{flooder.device_id}", token=viewer)
    assert device.status == 200
    assert device.body["revoked"] is False


async def test_a_device_cannot_end_the_hubs_link_or_another_devices_session(
    hub: Hub, enroll_device: Enroller
) -> None:
    """Client ids are certificates' CNs: a device claiming the hub link's id, or
    another device's, connects as itself and ends neither session."""
    a_paths, a = await enroll_device()
    b_paths, b = await enroll_device()
    async with _client(hub, b_paths, b.device_id) as victim:
        for claimed in ("outpost-hub-link", "outpost-hub", b.device_id):
            async with _client(hub, a_paths, claimed) as attacker:
                await attacker.publish(wire.up_topic(a.device_id, "status"), b"", qos=1)
        # The victim's session is whole: it still publishes, the hub still listens.
        await victim.publish(wire.up_topic(b.device_id, "status"), b"", qos=1)
        assert hub.parts.link.state.connected.is_set()
        log = (hub.paths.broker_dir / "mosquitto.log").read_text(errors="replace")
        assert f"as {a.device_id} " in log  # the broker took the CN, not the claimed id
        assert "as outpost-hub-link " in log
        assert "already connected, closing old connection" not in log, log[-2000:]

    # The control: a second connection with A's own certificate does end A's first.
    first = _client(hub, a_paths, "first")
    await first.__aenter__()
    ended: list[aiomqtt.MqttError] = []
    try:
        async with _client(hub, a_paths, "second"):
            for _ in range(100):  # until the broker has closed the first (a bounded poll)
                try:
                    await first.publish(wire.up_topic(a.device_id, "status"), b"", qos=1)
                except aiomqtt.MqttError as exc:
                    ended.append(exc)
                    break
                await asyncio.sleep(0.1)  # a poll, bounded by the loop
    finally:
        await _leave(first)
    assert ended, "a second connection with A's certificate left the first one open"


async def test_a_hold_whose_crl_write_failed_once_still_ends(
    hub: Hub, enroll_device: Enroller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRL write as the hold ends fails once (a locked database, a full disk): the
    next check writes it again, and the device is let in; before, the holds were
    counted as written and the device stayed refused until some other CRL write."""
    paths, identity = await enroll_device()
    now = time.time()
    assert await hub.parts.store.hold_device(identity.device_id, now=now, until=now + 600)

    async def refused() -> bool:  # a connection, not a TLS probe: quick either way
        return not await _connects(hub, paths)

    await eventually(refused, timeout=30, what="the held device refused")
    assert "REVOKED" in (await _refusal(hub, paths)).upper()
    real = revocation.write_crl
    failures: list[float] = []

    async def fails_once(*args: Any, **kwargs: Any) -> None:
        if not failures:
            failures.append(time.time())
            raise OSError(28, "No space left on device")
        await real(*args, **kwargs)

    monkeypatch.setattr(revocation, "write_crl", fails_once)
    # The hold ends now (its time moved back): the check after writes the CRL, and fails.
    assert await hub.parts.store.hold_device(identity.device_id, now=now, until=time.time())

    async def let_in() -> bool:
        return await _connects(hub, paths)

    await eventually(let_in, timeout=60, what="the device let in after its hold")
    assert failures, "the CRL write never failed: the test proved nothing"
