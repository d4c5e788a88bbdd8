"""Mosquitto's past advisories, re-run against the managed broker's configuration.

tests/integration/test_broker_security.py covers the door (foreign CA, no certificate,
TLS below 1.2, plain TCP) and confinement of ordinary devices; test_certificates.py a
revoked device reconnecting. Here: hostile certificate CNs and client ids (CVE-2017-7650
and the embedded-NUL CN), a stolen persistent session, revocation while messages are
queued and retained, an empty or missing ACL file, an expired certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.app import Hub
from hub.broker import managed as broker
from hub.broker import mosquittoconf
from hub.fleet import pki
from outpost import files, tls, wire
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.fuzz.conftest import count
from tests.integration.test_broker_security import (
    CONNECT,
    _client,
    _device_context,
    _hub_context,
    _mqtt_connect_over_tls,
)
from tests.support import eventually, free_port

NON_UTF8 = "{victim} and invalid UTF-8"
HOSTILE_CNS = ["+", "#", "+/+", "outpost/+/down/#", "{victim}/down", "{victim}/+", "{victim}\x00x"]


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


def issue_client(
    hub: Hub,
    folder: Path,
    common_name: str,
    *,
    expired: bool = False,
    raw_name: tuple[bytes, bytes] | None = None,
) -> ssl.SSLContext:
    """A client certificate of the fleet CA with any CN (the hub itself issues only ids).

    `raw_name` (placeholder, bytes) re-signs the certificate with the placeholder's bytes
    in the CN replaced, for a CN that no library will encode (invalid UTF-8).
    """
    ca_key, ca_cert = pki.load_ca(hub.paths.ca_key.read_bytes(), hub.paths.ca_cert.read_bytes())
    key = pki.new_ec_key()
    now = dt.datetime.now(dt.UTC)
    not_after = now - dt.timedelta(hours=1) if expired else now + dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = pki.cert_pem(cert)
    if raw_name is not None:
        placeholder, replacement = raw_name
        tbs = cert.tbs_certificate_bytes
        assert tbs.count(placeholder) == 1
        assert len(placeholder) == len(replacement)
        tbs = tbs.replace(placeholder, replacement)
        signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        der = _der(0x30, tbs + ECDSA_SHA256 + _der(0x03, b"\0" + signature))
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
    folder.mkdir(parents=True, exist_ok=True)
    files.write_new(folder / "client.key", pki.key_pem(key))
    files.write_new(folder / "client.crt", pem)
    return tls.client_context(hub.paths.ca_cert, folder / "client.crt", folder / "client.key")


@contextlib.asynccontextmanager
async def collecting(client: aiomqtt.Client, received: list[str]) -> AsyncIterator[None]:
    """Record the topic of every message `client` receives while the block runs."""

    async def collect() -> None:
        async for message in client.messages:
            received.append(message.topic.value)

    task = asyncio.create_task(collect(), name="collect")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def try_connect(hub: Hub, context: ssl.SSLContext, identifier: str) -> aiomqtt.Client | None:
    client = _client(hub, context, identifier)
    try:
        await client.__aenter__()
    except aiomqtt.MqttError:
        return None
    return client


async def test_hostile_common_names_reach_no_other_device(
    hub: Hub, enroll_device: Enroller, tmp_path: Path
) -> None:
    """A CN of `+`, `#`, with `/` or an embedded NUL grants nothing of another device."""
    victim_paths, victim = await enroll_device()
    b = victim.device_id
    problems: list[str] = []
    refused: list[str] = []
    async with (
        _client(hub, _device_context(victim_paths), b) as victim_client,
        _client(hub, _hub_context(hub), "outpost-hub-spy") as hub_spy,
    ):
        await victim_client.subscribe(wire.down_topic(b, "#"), qos=1)
        await hub_spy.subscribe(wire.up_topic("+", "#"), qos=1)
        for index, pattern in enumerate([*HOSTILE_CNS, NON_UTF8]):
            count("broker hostile CNs")
            name = pattern.format(victim=b)
            if pattern == NON_UTF8:  # the victim's id and two bytes of invalid UTF-8
                raw = (f"{b}QQ".encode(), f"{b}".encode() + b"\xff\xfe")
                # OpenSSL (Mosquitto's TLS library too) will not even decode such a
                # certificate: no client can present it, no broker could accept it.
                with pytest.raises(ssl.SSLError):
                    issue_client(hub, tmp_path / "cn-raw", f"{b}QQ", raw_name=raw)
                refused.append(name)
                continue
            context = issue_client(hub, tmp_path / f"cn-{index}", name)
            attacker = await try_connect(hub, context, f"attacker-{index}")
            if attacker is None:
                print(f"refused at the door: CN {name!r}")
                refused.append(name)
                continue  # refused at the door: nothing more to prove
            seen: list[str] = []
            spied: list[str] = []
            try:
                async with collecting(attacker, seen), collecting(hub_spy, spied):
                    for topic in ("#", wire.down_topic(b, "#"), wire.down_topic("+", "#")):
                        await attacker.subscribe(topic, qos=1)
                    await attacker.publish(wire.up_topic(b, "hello"), b"forged", qos=1)
                    own = f"outpost/{name}/up/x".replace("\x00", "")
                    if not {"+", "#"} & set(own):  # a client cannot even send those
                        await attacker.publish(own, b"f", qos=1)
                    # The victim's own message and the hub's to it, then round trips:
                    # anything the attacker could get would have reached it by then.
                    # (on a kind of the contract: the ACL lets devices write no other)
                    await victim_client.publish(wire.up_topic(b, "status"), b"ok", qos=1)

                    async def marker_seen(spied: list[str] = spied) -> bool:
                        return wire.up_topic(b, "status") in spied

                    await eventually(marker_seen, what="the victim's marker at the hub")
                    # (The spy holds the hub's certificate: one connection per CN.)
                    await hub_spy.publish(wire.down_topic(b, "secret"), b"for B", qos=1)
                    await attacker.publish("outpost/ping", b"", qos=1)
                    await attacker.publish("outpost/ping", b"", qos=1)
            finally:
                await attacker.__aexit__(None, None, None)
            if seen:
                problems.append(f"CN {name!r} received {seen}")
            if wire.up_topic(b, "hello") in spied:
                problems.append(f"CN {name!r} wrote into {b}'s up topic")
    assert not problems, "\n".join(problems)
    # The embedded NUL would read as the victim's id if cut short: refused at the door.
    # (The invalid UTF-8 CN may connect or not; either way it got nothing above.)
    assert f"{b}\x00x" in refused, refused


async def test_hostile_client_ids_gain_nothing(hub: Hub, enroll_device: Enroller) -> None:
    """Client ids with `+`, `#`, `/`, or another device's id give no access; a non-UTF-8
    client id is refused."""
    attacker_paths, _ = await enroll_device()
    victim_paths, victim = await enroll_device()
    b = victim.device_id
    problems: list[str] = []
    for identifier in ["+", "#", "outpost/+/down/#", f"outpost/{b}/down/#", f"{b}/#"]:
        count("broker hostile client ids")
        attacker = await try_connect(hub, _device_context(attacker_paths), identifier)
        if attacker is None:
            continue
        seen: list[str] = []
        try:
            async with collecting(attacker, seen):
                await attacker.subscribe(wire.down_topic(b, "#"), qos=1)
                await attacker.subscribe("#", qos=1)
                async with _client(hub, _hub_context(hub), "outpost-hub-pub") as hub_pub:
                    await hub_pub.publish(wire.down_topic(b, "secret"), b"for B", qos=1)
                await attacker.publish("outpost/ping", b"", qos=1)
                await attacker.publish("outpost/ping", b"", qos=1)
        finally:
            await attacker.__aexit__(None, None, None)
        if seen:
            problems.append(f"client id {identifier!r} received {seen}")

    # Non-UTF-8 client id, by hand (clients refuse to encode one): no accepting CONNACK.
    count("broker hostile client ids")
    bad_id = b"\xff\xfe\xc0\x80"
    packet = b"\x10" + bytes([12 + len(bad_id)]) + b"\x00\x04MQTT\x04\x02\x00\x3c"
    packet += len(bad_id).to_bytes(2, "big") + bad_id
    reply = await _raw_connect(hub, _device_context(attacker_paths), packet)
    if reply[:1] == b"\x20" and reply[3:4] == b"\x00":
        problems.append(f"a non-UTF-8 client id was accepted: {reply!r}")
    # The probe itself is sound: the same packet with a good id is accepted.
    assert (await _raw_connect(hub, _device_context(victim_paths), CONNECT))[:1] == b"\x20"
    assert not problems, "\n".join(problems)


async def _raw_connect(hub: Hub, context: ssl.SSLContext, packet: bytes) -> bytes:
    """Send one CONNECT packet; return the first bytes of the reply (b"" if closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.config.mqtt_port, ssl=context)
    try:
        writer.write(packet)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 5)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


async def test_another_devices_persistent_session_cannot_be_taken_over(
    hub: Hub, enroll_device: Enroller
) -> None:
    """Connecting with the victim's client id takes its session, never its messages."""
    attacker_paths, _ = await enroll_device()
    victim_paths, victim = await enroll_device()
    b = victim.device_id
    count("broker session takeover")
    persistent = aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=b,
        tls_context=_device_context(victim_paths),
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=False,
        timeout=5,
    )
    async with persistent:
        await persistent.subscribe(wire.down_topic(b, "#"), qos=1)
    # The control: a message queued while the victim is away reaches it on its return.
    async with _client(hub, _hub_context(hub), "outpost-hub-pub") as hub_pub:
        await hub_pub.publish(wire.down_topic(b, "first"), b"for B", qos=1)
    returned: list[str] = []
    async with persistent, collecting(persistent, returned):
        await persistent.publish(wire.up_topic(b, "ping"), b"", qos=1)
        await persistent.publish(wire.up_topic(b, "ping"), b"", qos=1)
    assert returned == [wire.down_topic(b, "first")]
    async with _client(hub, _hub_context(hub), "outpost-hub-pub") as hub_pub:
        await hub_pub.publish(wire.down_topic(b, "queued"), b"for B", qos=1)
    thief = aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=b,
        tls_context=_device_context(attacker_paths),
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=False,
        timeout=5,
    )
    seen: list[str] = []
    async with thief, collecting(thief, seen):
        await thief.publish("outpost/ping", b"", qos=1)
        await thief.publish("outpost/ping", b"", qos=1)
    assert seen == [], f"the thief received the victim's queued messages: {seen}"


async def test_revocation_stops_queued_and_retained_delivery(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    """Messages queued in a persistent session and retained ones never reach a device
    revoked in the meantime: its certificate no longer connects."""
    paths, identity = await enroll_device()
    b = identity.device_id
    count("broker revocation with a session")

    def persistent() -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            hub.config.mqtt_port,
            identifier=b,
            tls_context=_device_context(paths),
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            timeout=5,
        )

    async with persistent() as client:
        await client.subscribe(wire.down_topic(b, "#"), qos=1)
    # The control: before revocation, a queued message reaches the returning device.
    async with _client(hub, _hub_context(hub), "outpost-hub-pub") as hub_pub:
        await hub_pub.publish(wire.down_topic(b, "first"), b"first", qos=1)
    returned: list[str] = []
    async with persistent() as client, collecting(client, returned):
        await client.publish(wire.up_topic(b, "ping"), b"", qos=1)
        await client.publish(wire.up_topic(b, "ping"), b"", qos=1)
    assert returned == [wire.down_topic(b, "first")]
    async with _client(hub, _hub_context(hub), "outpost-hub-pub") as hub_pub:
        await hub_pub.publish(wire.down_topic(b, "queued"), b"queued", qos=1)
        await hub_pub.publish(wire.down_topic(b, "retained"), b"retained", qos=1, retain=True)

    reply = await api.call("POST", f"/api/v1/devices/{b}/revoke", token=await api.token("admin"))
    assert reply.status == 200, reply.body

    seen: list[str] = []
    with contextlib.suppress(aiomqtt.MqttError):
        async with persistent() as client, collecting(client, seen):
            await client.subscribe(wire.down_topic(b, "#"), qos=1)
            await client.publish(wire.up_topic(b, "ping"), b"", qos=1)
            seen.append("connected")
    assert seen == [], f"a revoked device still connected or received: {seen}"
    assert await _mqtt_connect_over_tls(hub, _device_context(paths)) != "connack"


async def test_expired_certificate_is_refused(hub: Hub, tmp_path: Path) -> None:
    count("broker expired certificate")
    context = issue_client(hub, tmp_path / "expired", "dev-expired0001", expired=True)
    assert await _mqtt_connect_over_tls(hub, context) != "connack"
    log = broker.log_file(hub.paths)
    await eventually(
        lambda: _has(log, "certificate verify failed"), what="the broker's reason (expired)"
    )
    # Control: the same CN, valid, connects.
    valid = issue_client(hub, tmp_path / "valid", "dev-expired0001")
    assert await _mqtt_connect_over_tls(hub, valid) == "connack"


async def _has(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


@pytest.mark.parametrize("acl", ["managed", "empty", "blank lines and comments", "missing"])
async def test_an_empty_or_missing_acl_file_never_allows_all(
    hub: Hub, enroll_device: Enroller, tmp_path: Path, acl: str
) -> None:
    """A second Mosquitto with the managed configuration but a broken ACL file: it
    refuses to start (missing) or denies every topic (empty), never allows all."""
    count("broker ACL file")
    paths_a, a = await enroll_device()
    port = free_port()
    folder = tmp_path / "acl-broker"
    folder.mkdir()
    acl_path = folder / "acl"
    if acl == "managed":  # the control: the same probe sees the device's own message
        acl_path.write_text(mosquittoconf.acl_text())
    elif acl == "empty":
        acl_path.write_text("")
    elif acl != "missing":
        acl_path.write_text("\n# nothing here\n\n")
    text = mosquittoconf.config_text(
        hub.paths, host="127.0.0.1", port=port, max_packet_bytes=1 << 16, crl=False
    )
    text = text.replace(f"acl_file {hub.paths.broker_dir / 'acl'}", f"acl_file {acl_path}")
    text = text.replace(
        f"persistence_location {hub.paths.broker_dir}/", f"persistence_location {folder}/"
    )
    text = text.replace(
        f"log_dest file {broker.log_file(hub.paths)}", f"log_dest file {folder}/log"
    )
    conf = folder / "mosquitto.conf"
    conf.write_text(text)
    process = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        started = await _listening(port, process)
        if acl == "missing":
            assert not started, "Mosquitto started without its ACL file"
            return
        assert started, (folder / "log").read_text(errors="replace")
        seen: list[str] = []
        context = _device_context(paths_a)
        async with (
            _port_client(port, context, a.device_id) as device,
            _port_client(port, _hub_context(hub), "outpost-hub-x") as hub_client,
            collecting(device, seen),
        ):
            await device.subscribe("#", qos=1)
            await device.subscribe(wire.down_topic(a.device_id, "#"), qos=1)
            await hub_client.publish(wire.down_topic(a.device_id, "x"), b"x", qos=1)
            await hub_client.publish("elsewhere/x", b"x", qos=1)
            await device.publish("outpost/ping", b"", qos=1)
            await device.publish("outpost/ping", b"", qos=1)
        if acl == "managed":
            # Once per matching subscription ("#" and its own): Mosquitto's way.
            assert set(seen) == {wire.down_topic(a.device_id, "x")}
        else:
            assert seen == [], f"an {acl} ACL file let a device read {seen}"
    finally:
        process.terminate()
        process.wait(10)


def _port_client(port: int, context: ssl.SSLContext, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
    )


async def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Whether Mosquitto listens on `port` within a few seconds (False if it exits)."""
    for _ in range(100):
        if process.poll() is not None:
            return False
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # a poll, bounded by the loop
            continue
        writer.close()
        return True
    return False
