"""`outpost-hub broker-config`: the files an external broker needs, proven on a real
Mosquitto started with them (EMQX cannot run here: its files are checked as text)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.broker.managed import find_program
from hub.broker.sharegroup import share_group, shared_topic
from hub.cli import main
from hub.config import HubConfig
from hub.fleet import revocation, throwaway
from hub.paths import HubPaths, link_cn
from hub.store import Device, HubStore
from outpost import schema, wire
from tests.integration.test_broker_security import CONNECT
from tests.support import REPO, eventually, free_port

REPLICAS = ("r1", "r2")  # passed to --replica; "r9" is not
START_TIMEOUT_S = 30.0  # generous: the suite must pass on a machine 5x slower
DELIVERY_TIMEOUT_S = 30.0
EXTERNAL = "mqtts://127.0.0.1:8883"


@dataclass
class Broker:
    """A Mosquitto started by the test with the files `broker-config` wrote."""

    out: Path
    port: int
    process: subprocess.Popen[bytes]


@dataclass
class Inbox:
    """What one MQTT client received, in order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def payloads(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.messages if t == topic]


def _broker_config(data: Path, out: Path, *args: str) -> int:
    return main(["broker-config", "--data", str(data), "--out", str(out), *args])


@pytest.fixture
def generated(hub_paths: HubPaths, tmp_path: Path) -> tuple[Path, int]:
    """`broker-config --kind mosquitto` for replicas r1 and r2 on a free loopback port."""
    out, port = tmp_path / "broker", free_port()
    replicas = [arg for r in REPLICAS for arg in ("--replica", r)]
    code = _broker_config(
        hub_paths.root, out, "--kind", "mosquitto", "--listen", f"127.0.0.1:{port}", *replicas
    )
    assert code == 0
    return out, port


@pytest.fixture
async def broker(generated: tuple[Path, int]) -> AsyncIterator[Broker]:
    """Mosquitto running with the generated mosquitto.conf, as an operator would run it."""
    out, port = generated
    process = subprocess.Popen(
        [find_program("mosquitto"), "-c", str(out / "mosquitto.conf")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _until_listening(port, process, out / "mosquitto.log")
        yield Broker(out, port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _until_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # poll: Mosquitto has no readiness signal
            continue
        writer.close()
        return
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "no log"
    raise AssertionError(f"Mosquitto did not start with the generated config: {tail}")


def _context(paths: HubPaths, cn: str) -> ssl.SSLContext:
    """A client certificate for `cn` from the hub's CA, as enrollment and links get."""
    cert, _ = throwaway.mint(paths, cn, days=1)
    return throwaway.client_context(paths, cert)


def _client(broker: Broker, paths: HubPaths, cn: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier=cn,
        tls_context=_context(paths, cn),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=DELIVERY_TIMEOUT_S,
    )


@contextlib.asynccontextmanager
async def _receiving(client: aiomqtt.Client) -> AsyncIterator[Inbox]:
    """Collect what `client` receives until the block ends."""
    inbox = Inbox()

    async def collect() -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            inbox.messages.append((message.topic.value, message.payload))

    task = asyncio.create_task(collect(), name="test.broker-config.collect")
    try:
        yield inbox
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
    await client.subscribe(topic, options=SubscribeOptions(qos=1))


async def _publish(client: aiomqtt.Client, topic: str, payload: bytes) -> None:
    # QoS 1: it returns once Mosquitto acknowledged it, which it does after queueing the
    # message for every subscriber; what is published next reaches them after it.
    await client.publish(topic, payload, qos=1)


def _heartbeat(device: str) -> str:
    return wire.up_topic(device, "heartbeat")


def _shared(paths: HubPaths) -> str:
    """The replicas' subscription: their group's, named from the hub's signing key."""
    return shared_topic(paths, wire.UP_WILDCARD)


# ------------------------------------------------------------- shared subscription


async def test_each_device_message_reaches_exactly_one_of_two_replicas(
    broker: Broker, hub_paths: HubPaths
) -> None:
    devices = [f"dev-split-{i}" for i in range(5)]
    sent = {f"{d}:{n}".encode(): _heartbeat(d) for d in devices for n in range(10)}
    async with contextlib.AsyncExitStack() as stack:
        r1 = await stack.enter_async_context(_client(broker, hub_paths, link_cn("r1")))
        r2 = await stack.enter_async_context(_client(broker, hub_paths, link_cn("r2")))
        clients = {
            d: await stack.enter_async_context(_client(broker, hub_paths, d)) for d in devices
        }
        inbox1 = await stack.enter_async_context(_receiving(r1))
        inbox2 = await stack.enter_async_context(_receiving(r2))
        await _subscribe(r1, _shared(hub_paths))
        await _subscribe(r2, _shared(hub_paths))

        for payload, topic in sent.items():
            await _publish(clients[topic.split("/")[3]], topic, payload)

        # Then markers, one at a time, until each replica has had one: a replica
        # receives in order, so anything of the 50 still coming to it (a second copy)
        # would have come before its marker.
        marker_topic = _heartbeat(devices[0])
        markers = 0

        async def both_had_a_marker() -> bool:
            nonlocal markers
            had = [any(p.startswith(b"marker") for _, p in i.messages) for i in (inbox1, inbox2)]
            if all(had):
                return True
            seen = sum(p.startswith(b"marker") for i in (inbox1, inbox2) for _, p in i.messages)
            if seen == markers:  # the last one arrived, at one replica: send another
                markers += 1
                await _publish(clients[devices[0]], marker_topic, b"marker-%d" % markers)
            return False

        await eventually(
            both_had_a_marker, timeout=DELIVERY_TIMEOUT_S, what="a marker at each replica"
        )

    got1 = [p for _, p in inbox1.messages if not p.startswith(b"marker")]
    got2 = [p for _, p in inbox2.messages if not p.startswith(b"marker")]
    assert sorted(got1 + got2) == sorted(sent), "every message, each exactly once"
    assert not set(got1) & set(got2)
    assert got1, "the broker did not split the messages: all went to r2"
    assert got2, "the broker did not split the messages: all went to r1"


# ------------------------------------------------------------------------------ ACL


async def test_a_device_writes_only_its_own_up_topics(broker: Broker, hub_paths: HubPaths) -> None:
    async with (
        _client(broker, hub_paths, link_cn("r1")) as replica,
        _client(broker, hub_paths, "dev-a") as a,
        _receiving(replica) as inbox,
    ):
        await _subscribe(replica, _shared(hub_paths))
        # A writes into B's topic first, then into its own: the replica gets A's own in
        # order, so B's would have arrived before it.
        await _publish(a, _heartbeat("dev-b"), b"forged by A")
        await _publish(a, _heartbeat("dev-a"), b"A's own")

        await eventually(
            lambda: _has(inbox, _heartbeat("dev-a")), timeout=DELIVERY_TIMEOUT_S, what="A's own"
        )

    assert inbox.messages == [(_heartbeat("dev-a"), b"A's own")]


async def test_a_device_reads_only_its_own_down_topics(broker: Broker, hub_paths: HubPaths) -> None:
    async with (
        _client(broker, hub_paths, link_cn("r2")) as replica,
        _client(broker, hub_paths, "dev-a") as spy,
        _client(broker, hub_paths, "dev-b") as victim,
        _receiving(spy) as spied,
        _receiving(victim) as delivered,
    ):
        await _subscribe(spy, wire.down_topic("dev-b", "#"))  # B's: refused
        await _subscribe(spy, wire.down_topic("dev-a", "#"))  # its own
        await _subscribe(victim, wire.down_topic("dev-b", "#"))
        await _publish(replica, wire.down_topic("dev-b", "secret"), b"for B only")
        await _publish(replica, wire.down_topic("dev-a", "marker"), b"for A")

        await eventually(
            lambda: _has(spied, wire.down_topic("dev-a", "marker")),
            timeout=DELIVERY_TIMEOUT_S,
            what="A's own downlink",
        )
        await eventually(
            lambda: _has(delivered, wire.down_topic("dev-b", "secret")),
            timeout=DELIVERY_TIMEOUT_S,
            what="B's downlink at B",
        )

    assert spied.messages == [(wire.down_topic("dev-a", "marker"), b"for A")]
    assert delivered.messages == [(wire.down_topic("dev-b", "secret"), b"for B only")]


@pytest.mark.parametrize(("replica", "listed"), [("r1", True), ("r9", False)])
async def test_only_a_listed_replica_gets_device_messages(
    broker: Broker, hub_paths: HubPaths, replica: str, listed: bool
) -> None:
    """Each alone in the share group (Mosquitto grants the subscription whatever its
    ACL, and an unlisted member would swallow its share of the listed ones' messages)."""
    cn = link_cn(replica)
    own_down = wire.down_topic(cn, "marker")  # any client may read its own down/#
    async with (
        _client(broker, hub_paths, cn) as link,
        _client(broker, hub_paths, link_cn("r2")) as other,
        _client(broker, hub_paths, "dev-a") as device,
        _receiving(link) as inbox,
    ):
        await _subscribe(link, _shared(hub_paths))
        await _subscribe(link, wire.down_topic(cn, "#"))
        await _publish(device, _heartbeat("dev-a"), b"beat")
        # Queued after the heartbeat: when it arrives, the heartbeat would have.
        await _publish(other, own_down, b"done")

        await eventually(
            lambda: _has(inbox, own_down), timeout=DELIVERY_TIMEOUT_S, what="the marker"
        )

    expected = [(_heartbeat("dev-a"), b"beat")] if listed else []
    assert inbox.messages == [*expected, (own_down, b"done")]


@pytest.mark.parametrize("knows_the_name", [False, True])
async def test_a_device_cannot_join_the_replicas_group_by_guessing_its_name(
    broker: Broker, hub_paths: HubPaths, knows_the_name: bool
) -> None:
    """Mosquitto grants any subscription and checks deliveries alone: a device that
    joined the replicas' group (named `outpost-hub` once, for all to guess) was chosen
    for its share of every device's messages, which the broker then dropped. The name
    now comes from the hub's signing key; a guess makes a group of the device's own.
    Knowing the name (the control) it would still take its share."""
    group = share_group(hub_paths) if knows_the_name else "outpost-hub"
    cn = link_cn("r1")
    own_down = wire.down_topic(cn, "marker")
    async with (
        _client(broker, hub_paths, cn) as link,
        _client(broker, hub_paths, link_cn("r2")) as other,
        _client(broker, hub_paths, "dev-a") as spy,
        _client(broker, hub_paths, "dev-b") as device,
        _receiving(link) as inbox,
    ):
        await _subscribe(link, _shared(hub_paths))
        await _subscribe(link, wire.down_topic(cn, "#"))
        await _subscribe(spy, f"$share/{group}/{wire.UP_WILDCARD}")
        for n in range(20):
            await _publish(device, _heartbeat("dev-b"), b"beat-%d" % n)
        await _publish(other, own_down, b"done")  # after the beats, as above

        await eventually(
            lambda: _has(inbox, own_down), timeout=DELIVERY_TIMEOUT_S, what="the marker"
        )

    beats = inbox.payloads(_heartbeat("dev-b"))
    if knows_the_name:
        assert 0 < len(beats) < 20, "the control: a member that knows the name takes a share"
    else:
        assert beats == [b"beat-%d" % n for n in range(20)]


async def _has(inbox: Inbox, topic: str) -> bool:
    return bool(inbox.payloads(topic))


# ----------------------------------------------------------------------- revocation


async def _tls_connect(port: int, context: ssl.SSLContext) -> str:
    """Send a bare CONNECT over TLS: "connack", or the TLS alert that ended it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc).lower()
    try:
        writer.write(CONNECT)
        await writer.drain()
        # With TLS 1.3 the broker judges the certificate after the handshake: a
        # refusal comes as an alert on the first read.
        first = await asyncio.wait_for(reader.read(1), DELIVERY_TIMEOUT_S)
        return "connack" if first == b"\x20" else f"closed ({first!r})"
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc).lower()
    finally:
        writer.close()


@pytest.fixture
async def registered(hub_paths: HubPaths) -> dict[str, ssl.SSLContext]:
    """Two devices in the registry, each with a certificate recorded as its own."""
    store = await asyncio.to_thread(HubStore, hub_paths.database)
    contexts = {}
    try:
        for device_id in ("dev-revoked", "dev-kept"):
            await _register(store, device_id)
            cert = await throwaway.issue(hub_paths, store, device_id, reason="test")
            contexts[device_id] = throwaway.client_context(hub_paths, cert)
    finally:
        store.close()
    return contexts


async def _register(store: HubStore, device_id: str) -> None:
    await store.add_device(
        Device(
            device_id=device_id,
            profile="generic",
            labels={},
            online=False,
            last_seen=None,
            last_heartbeat=None,
            heartbeat_interval=None,
            agent_version=None,
            capabilities={},
            load={},
            enrolled_at=time.time(),
            cert_serial=device_id.encode().hex(),
            cert_not_before=time.time(),
            cert_not_after=time.time() + 86400,  # a CRL lists it
        )
    )


async def test_revoke_through_an_external_broker(
    registered: dict[str, ssl.SSLContext],
    broker: Broker,
    hub_paths: HubPaths,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for context in registered.values():  # the control: both connect before
        assert await _tls_connect(broker.port, context) == "connack"
    with hub_paths.config.open("a") as toml:
        toml.write(
            f'broker = "mqtts://127.0.0.1:{broker.port}"\n'
            f'broker_crl_path = "{broker.out / "crl.pem"}"\n'
            f'broker_reload_command = "kill -HUP {broker.process.pid}"\n'
        )
    capsys.readouterr()

    # The `device revoke` command, as an operator runs it beside the hub (in a thread:
    # it runs its own event loop).
    code = await asyncio.to_thread(
        main, ["device", "revoke", "--data", str(hub_paths.root), "dev-revoked"]
    )

    printed = capsys.readouterr()
    assert code == 0, printed
    assert "proven: the broker refuses its certificates as revoked" in printed.out
    crl = (broker.out / "crl.pem").read_bytes()
    assert crl == (hub_paths.broker_dir / "crl.pem").read_bytes(), "the same CRL in both"

    async def refused_as_revoked() -> str | None:
        outcome = await _tls_connect(broker.port, registered["dev-revoked"])
        return outcome if "revoked" in outcome else None

    await eventually(refused_as_revoked, timeout=DELIVERY_TIMEOUT_S, what="a refusal")
    assert await _tls_connect(broker.port, registered["dev-kept"]) == "connack"


async def test_a_failing_reload_command_is_reported_not_raised(
    registered: dict[str, ssl.SSLContext],
    broker: Broker,
    hub_paths: HubPaths,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with hub_paths.config.open("a") as toml:
        toml.write(
            f'broker = "mqtts://127.0.0.1:{broker.port}"\n'
            f'broker_crl_path = "{broker.out / "crl.pem"}"\n'
            'broker_reload_command = "false"\n'
        )
    capsys.readouterr()

    code = await asyncio.to_thread(
        main, ["device", "revoke", "--data", str(hub_paths.root), "dev-revoked"]
    )

    printed = capsys.readouterr()
    assert code == 0, printed
    assert "external broker: it was not told to re-read the CRL" in printed.out
    assert "Traceback" not in printed.err
    # The CRL went where the broker reads it, though the broker was not told.
    assert (broker.out / "crl.pem").read_bytes() == (hub_paths.broker_dir / "crl.pem").read_bytes()


# --------------------------------------------------------------------- the files


def test_mosquitto_files_and_their_modes(generated: tuple[Path, int], hub_paths: HubPaths) -> None:
    out, port = generated
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {
        "ca.crt": 0o644,
        "server.crt": 0o644,
        "crl.pem": 0o644,
        "server.key": 0o600,
        "mosquitto.conf": 0o600,
        "acl": 0o600,
        "README.txt": 0o600,
    }
    assert (out / "ca.crt").read_bytes() == hub_paths.ca_cert.read_bytes()
    assert (out / "server.key").read_bytes() == hub_paths.server_key.read_bytes()
    conf = (out / "mosquitto.conf").read_text()
    for line in (
        f"listener {port} 127.0.0.1",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {out / 'crl.pem'}",
        f"acl_file {out / 'acl'}",
        f"cafile {out / 'ca.crt'}",
    ):
        assert line in conf.splitlines()
    assert str(hub_paths.root) not in conf, "it names only files in its own folder"
    acl = (out / "acl").read_text()
    assert f"user {link_cn('r1')}" in acl
    assert f"user {link_cn('r2')}" in acl
    assert link_cn("r9") not in acl


def test_emqx_files_use_the_documented_settings_and_deny_by_default(
    hub_paths: HubPaths, tmp_path: Path
) -> None:
    out = tmp_path / "emqx"
    code = _broker_config(
        hub_paths.root, out, "--kind", "emqx", "--replica", "r1", "--listen", "[::]:8883"
    )

    assert code == 0
    conf = (out / "emqx.conf").read_text()
    settings = {
        m.group(1): m.group(2) for m in re.finditer(r"^\s*([\w.]+)\s*=\s*(.+?)\s*$", conf, re.M)
    }
    assert settings["bind"] == '"[::]:8883"'
    assert settings["verify"] == "verify_peer"
    assert settings["fail_if_no_peer_cert"] == "true"
    assert settings["versions"] == '["tlsv1.3", "tlsv1.2"]'
    assert settings["peer_cert_as_username"] == "cn"
    assert settings["peer_cert_as_clientid"] == "cn"
    assert settings["shared_subscription"] == "true"
    assert settings["no_match"] == "deny"
    assert settings["enable_crl_check"] == "false", "the fleet's certificates name no CDP"
    for plain in ("tcp", "ws", "wss"):
        assert settings[f"listeners.{plain}.default.enable"] == "false"
    assert settings["path"] == f'"{out / "acl.conf"}"'
    assert conf.count("{") == conf.count("}")
    assert "Checked only against EMQX 5's documentation" in conf

    acl = [
        line
        for line in (out / "acl.conf").read_text().splitlines()
        if line and not line.startswith("%%")
    ]
    assert acl[-1] == "{deny, all}.", "deny by default, the last rule"
    assert all(rule.startswith("{") and rule.endswith("}.") for rule in acl)
    assert not any(rule.startswith("{allow, all}") for rule in acl)
    r1 = f'{{username, "{link_cn("r1")}"}}'
    assert f'{{allow, {r1}, subscribe, ["{wire.UP_WILDCARD}"]}}.' in acl
    assert f'{{allow, {r1}, publish, ["{wire.TOPIC_PREFIX}/+/down/#"]}}.' in acl
    assert f'{{allow, all, subscribe, ["{wire.TOPIC_PREFIX}/${{username}}/down/#"]}}.' in acl
    device_writes = next(r for r in acl if r.startswith("{allow, all, publish"))
    assert f'"{wire.TOPIC_PREFIX}/${{username}}/up/heartbeat"' in device_writes
    assert "+" not in device_writes
    assert "#" not in device_writes
    assert link_cn("r9") not in "\n".join(acl)
    readme = (out / "README.txt").read_text()
    assert "checked only" in readme
    assert "NOT TESTED" in readme
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kind", "hivemq"], "invalid choice: 'hivemq'"),
        (["--kind", "mosquitto", "--listen", "8883"], "--listen '8883': give HOST:PORT"),
        (["--kind", "mosquitto", "--listen", "host:99999"], "give HOST:PORT"),
        (["--kind", "mosquitto", "--listen", "a b:8883"], "--listen 'a b:8883': 'a b': neither"),
        (["--kind", "mosquitto", "--replica", "r 1"], "--replica: 'r 1': use letters"),
        (["--kind", "mosquitto"], "is not empty: give an empty or new folder, or --force"),
    ],
)
def test_cli_errors_are_clear(
    hub_paths: HubPaths, tmp_path: Path, args: list[str], says: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("an operator's file")
    if "is not empty" not in says:
        (out / "mine.txt").unlink()  # the error is another: the folder is empty

    result = _cli("broker-config", "--data", str(hub_paths.root), "--out", str(out), *args)

    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == (["mine.txt"] if "is not empty" in says else [])


def test_force_writes_into_a_folder_that_is_not_empty(hub_paths: HubPaths, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")

    code = _broker_config(hub_paths.root, out, "--kind", "mosquitto", "--force")

    assert code == 0
    assert (out / "mine.txt").read_text() == "kept"
    assert "listener 8883 0.0.0.0" in (out / "mosquitto.conf").read_text()


# ------------------------------------------------------------------ the settings


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"broker_crl_path": "/etc/broker/crl.pem"}, "is for an external broker"),
        ({"broker_reload_command": "true"}, "is for an external broker"),
        ({"broker": EXTERNAL, "broker_crl_path": "crl.pem"}, "give an absolute path"),
        ({"broker": EXTERNAL, "broker_reload_command": "kill -HUP '12"}, "No closing quotation"),
        ({"broker": EXTERNAL, "broker_reload_command": "  "}, "names no program"),
    ],
)
def test_external_broker_settings_are_checked_at_load(settings: dict[str, str], says: str) -> None:
    with pytest.raises(schema.SchemaError, match=says):
        HubConfig(**settings)  # type: ignore[arg-type]


async def test_a_reload_command_that_fails_is_logged_and_never_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(revocation, "RELOAD_COMMAND_TIMEOUT_S", 0.5)

    def command(line: str) -> HubConfig:
        return HubConfig(broker=EXTERNAL, broker_reload_command=line)

    started = time.monotonic()
    assert await revocation.reload_external(command("sleep 600")) is False
    assert time.monotonic() - started < 60, "killed at its timeout"
    assert await revocation.reload_external(command("/nonexistent/reload")) is False
    assert await revocation.reload_external(command("sh -c 'echo busy >&2; exit 3'")) is False
    assert await revocation.reload_external(command("true")) is True

    logged = caplog.text
    assert "did not finish in 0 s; killed it" in logged
    assert "could not start" in logged
    assert "exited with status 3: busy" in logged


async def test_a_crl_path_that_cannot_be_written_is_named(
    hub_paths: HubPaths, tmp_path: Path
) -> None:
    config = HubConfig(broker=EXTERNAL, broker_crl_path=str(tmp_path / "missing" / "crl.pem"))
    store = await asyncio.to_thread(HubStore, hub_paths.database)
    try:
        with pytest.raises(revocation.BrokerCrlError, match=r"broker_crl_path .*missing"):
            await revocation.write_crl(hub_paths, store, config)
    finally:
        store.close()
