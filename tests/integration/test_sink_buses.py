"""The NATS JetStream and RabbitMQ sinks against real, throwaway servers: events arrive in
order with their ids, bodies and topics; publishing them again is harmless; a server
that is down or silent is a SinkError within timeout_s, and publishing works again once
it is back; refused credentials are a permanent SinkError that says so; an unreachable
URL is a SinkError naming it."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import msgspec
import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from hub.sinks.base import CONTENT_TYPE, Event, EventRefusedError, SinkError
from hub.sinks.config import SinkConfig
from hub.sinks.nats import NatsSink
from hub.sinks.rabbitmq import RabbitSink
from tests.buses import (
    AmqpCollector,
    ThrowawayNats,
    ThrowawayRabbit,
    delete_stream,
    once_each,
    read_stream,
    stream_count,
)
from tests.linkproxy import LinkProxy
from tests.support import free_port
from tests.tlsfiles import make_tls_files

TIMEOUT_S = 2.0  # the sinks' timeout_s in the failure tests
# What a failure may take beyond timeout_s: nats-py's second connection attempt, the
# closing handshake, a machine five times slower than this one.
SLACK_S = 8.0
TYPES = ["org.outpost.task.succeeded", "org.outpost.device.online", "org.outpost.record.stored"]


def make_events(count: int, *, first: int = 1, size: int = 0) -> list[Event]:
    """`count` events over three devices, every fifth one fleet-wide (no device)."""
    out = []
    for number in range(first, first + count):
        fleet_wide = number % 5 == 0
        out.append(
            Event(
                id=f"evt-{number}",
                type="org.outpost.rollout.progress" if fleet_wide else TYPES[number % 3],
                source="https://hub.test",
                subject="" if fleet_wide else f"dev-bus00000000{number % 3}",
                time=f"2025-01-02T03:04:{number % 60:02d}.000Z",
                data={"n": number, "pad": "x" * size},
            )
        )
    return out


def credentials(tmp_path: Path, user: str, password: str) -> str:
    path = tmp_path / f"bus-{uuid.uuid4().hex[:8]}.creds"
    path.write_text(f"{user}:{password}\n")
    return str(path)


# --- NATS JetStream ------------------------------------------------------------------


@pytest.fixture
async def stream(nats_server: ThrowawayNats, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A stream name of this test's own, deleted after it: the shared server's streams
    all take `outpost.>`, so only one may exist at a time."""
    name = f"T_{request.node.name[:40]}_{uuid.uuid4().hex[:6]}".replace("[", "_").replace("]", "_")
    yield name
    await delete_stream(nats_server.url, name, user=nats_server.user, password=nats_server.password)


def nats_config(
    server: ThrowawayNats,
    tmp_path: Path,
    stream: str,
    *,
    password: str | None = None,
    url: str | None = None,
    timeout_s: float = 10.0,
) -> SinkConfig:
    creds = ""
    if server.user:
        creds = credentials(
            tmp_path, server.user, server.password if password is None else password
        )
    return SinkConfig(
        name="jetstream",
        kind="nats",
        url=url or server.url,
        credentials_file=creds,
        target=stream,
        timeout_s=timeout_s,
    )


async def read(server: ThrowawayNats, stream: str) -> list[tuple[str, str, bytes]]:
    got = await read_stream(server.url, stream, user=server.user, password=server.password)
    return [(m.topic, m.id, m.body) for m in got]


async def test_nats_events_arrive_in_order_with_ids_bodies_and_topics(
    nats_server: ThrowawayNats, stream: str, tmp_path: Path
) -> None:
    events = make_events(40)
    sink = NatsSink(nats_config(nats_server, tmp_path, stream))
    await sink.start()
    try:
        await sink.publish(events[:25])
        await sink.publish(events[25:])
    finally:
        await sink.close()
        await sink.close()  # twice is harmless

    assert await read(nats_server, stream) == [(e.topic(), e.id, e.body()) for e in events]
    first = (
        await read_stream(nats_server.url, stream, user="outpost", password=nats_server.password)
    )[0]
    assert first.headers["Content-Type"] == CONTENT_TYPE
    document = json.loads(first.body)
    assert document["specversion"] == "1.0"
    assert document["id"] == "evt-1"
    assert first.topic == "outpost.device.online.dev-bus000000001"
    # The stream the sink made: on disk, taking every outpost subject.
    client = await nats.connect(
        nats_server.url, user=nats_server.user, password=nats_server.password
    )
    try:
        info = await client.jetstream().stream_info(stream)
    finally:
        await client.close()
    assert info.config.subjects == ["outpost.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window is not None
    assert info.config.duplicate_window >= 120


async def test_nats_events_published_again_are_stored_once(
    nats_server: ThrowawayNats, stream: str, tmp_path: Path
) -> None:
    events = make_events(30)
    config = nats_config(nats_server, tmp_path, stream)
    sink = NatsSink(config)
    await sink.start()
    await sink.publish(events)
    await sink.close()
    count = await stream_count(
        nats_server.url, stream, user=nats_server.user, password=nats_server.password
    )
    assert count == 30

    # The hub died before its cursor moved: a new sink sends the last 20 again, then on.
    again = NatsSink(config)
    await again.start()
    await again.publish(events[10:])
    count = await stream_count(
        nats_server.url, stream, user=nats_server.user, password=nats_server.password
    )
    assert count == 30
    await again.publish(make_events(5, first=31))
    await again.close()

    expected = [(e.topic(), e.id, e.body()) for e in events + make_events(5, first=31)]
    assert await read(nats_server, stream) == expected


async def test_nats_stream_that_discards_new_messages_is_published_one_at_a_time(
    nats_server: ThrowawayNats, stream: str, tmp_path: Path
) -> None:
    """A stream an operator made, with limits that refuse new messages: the sink takes it
    as it is, sends one event at a time (so a refusal cannot let a later one pass), and
    a refusal is a SinkError after which nothing later was stored."""
    client = await nats.connect(
        nats_server.url, user=nats_server.user, password=nats_server.password
    )
    try:
        await client.jetstream().add_stream(
            StreamConfig(
                name=stream,
                subjects=["outpost.>"],
                storage=StorageType.MEMORY,
                max_msgs=12,
                discard=DiscardPolicy.NEW,
            )
        )
    finally:
        await client.close()
    events = make_events(15)
    sink = NatsSink(nats_config(nats_server, tmp_path, stream))
    await sink.start()
    try:
        with pytest.raises(SinkError, match="refused evt-13") as refused:
            await sink.publish(events)
    finally:
        await sink.close()
    assert not refused.value.permanent
    assert [m[1] for m in await read(nats_server, stream)] == [e.id for e in events[:12]]


async def test_nats_event_too_large_for_the_stream_is_refused_alone(
    nats_server: ThrowawayNats, stream: str, tmp_path: Path
) -> None:
    client = await nats.connect(
        nats_server.url, user=nats_server.user, password=nats_server.password
    )
    try:
        await client.jetstream().add_stream(
            StreamConfig(name=stream, subjects=["outpost.>"], max_msg_size=2000)
        )
    finally:
        await client.close()
    events = make_events(3)
    big = make_events(1, first=4, size=4000)
    sink = NatsSink(nats_config(nats_server, tmp_path, stream))
    await sink.start()
    try:
        with pytest.raises(EventRefusedError) as refused:
            await sink.publish(events + big + make_events(2, first=5))
        # The drain dead-letters it and goes on from the next event.
        await sink.publish(make_events(2, first=5))
    finally:
        await sink.close()
    assert refused.value.event.id == "evt-4"
    assert "maximum" in refused.value.reason
    ids = [m[1] for m in await read(nats_server, stream)]
    assert ids == ["evt-1", "evt-2", "evt-3", "evt-5", "evt-6"]


async def test_nats_server_stopped_or_silent_fails_within_timeout_then_recovers(
    tmp_path: Path,
) -> None:
    with ThrowawayNats() as server:
        config = nats_config(server, tmp_path, "OUTPOST", timeout_s=TIMEOUT_S)
        sink = NatsSink(config)
        await sink.start()
        await sink.publish(make_events(5))

        # A server that holds the connection and never answers.
        proxy = LinkProxy(server.port)
        await proxy.start()
        try:
            silent = NatsSink(
                nats_config(
                    server,
                    tmp_path,
                    "OUTPOST",
                    url=f"nats://127.0.0.1:{proxy.port}",
                    timeout_s=TIMEOUT_S,
                )
            )
            await silent.start()
            proxy.pause()
            started = time.monotonic()
            with pytest.raises(SinkError, match="not acknowledged within 2 s"):
                await silent.publish(make_events(5, first=6))
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S
            await silent.close()
        finally:
            await proxy.close()

        server.stop()
        started = time.monotonic()
        with pytest.raises(SinkError) as lost:
            await sink.publish(make_events(5, first=6))
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert not lost.value.permanent
        await sink.close()
        # While it is down a new sink (the drain's next try) cannot start either.
        started = time.monotonic()
        with pytest.raises(SinkError, match=f"NATS at nats://127.0.0.1:{server.port}"):
            await NatsSink(config).start()
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S

        server.start()  # the same port and store: the stream is still there
        sink = NatsSink(config)
        await sink.start()
        await sink.publish(make_events(10, first=6))
        await sink.close()
        ids = [m.id for m in await read_stream(server.url, "OUTPOST")]
        assert ids == [f"evt-{n}" for n in range(1, 16)]


async def test_nats_refused_credentials_are_a_permanent_error(
    nats_server: ThrowawayNats, stream: str, tmp_path: Path
) -> None:
    wrong = NatsSink(nats_config(nats_server, tmp_path, stream, password="not-it"))
    started = time.monotonic()
    with pytest.raises(SinkError) as refused:
        await wrong.start()
    assert time.monotonic() - started < SLACK_S
    await wrong.close()
    assert refused.value.permanent
    assert str(refused.value) == (
        f"NATS at {nats_server.url} refused the credentials (user 'outpost'): "
        "check credentials_file"
    )
    assert nats_server.password not in str(refused.value)

    right = NatsSink(nats_config(nats_server, tmp_path, stream))
    await right.start()
    await right.publish(make_events(1))
    await right.close()


async def test_nats_user_that_may_not_make_the_stream_is_a_permanent_error(
    tmp_path: Path,
) -> None:
    """A user allowed to publish events but not to use JetStream's API: the sink cannot
    see or make its stream, and says so once its request goes unanswered."""
    users = (
        "authorization { users = [\n"
        '  { user: writer, password: "w", permissions: {\n'
        '    publish: ["outpost.>"], subscribe: ["_INBOX.>"] } }\n'
        "] }\n"
    )
    with ThrowawayNats(config=users) as server:
        config = SinkConfig(
            name="jetstream",
            kind="nats",
            url=server.url,
            credentials_file=credentials(tmp_path, "writer", "w"),
            timeout_s=TIMEOUT_S,
        )
        sink = NatsSink(config)
        started = time.monotonic()
        with pytest.raises(SinkError, match="may not read or make stream OUTPOST") as denied:
            await sink.start()
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert denied.value.permanent
        assert "permissions violation for publish to" in str(denied.value).lower()
        await sink.close()


async def test_nats_unreachable_url_is_an_error_naming_it(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    sink = NatsSink(SinkConfig(name="jetstream", kind="nats", url=url, timeout_s=TIMEOUT_S))
    started = time.monotonic()
    with pytest.raises(SinkError, match=f"NATS at {url}: cannot connect") as failed:
        await sink.start()
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert not failed.value.permanent
    await sink.close()


def test_nats_configuration_mistakes_are_refused_at_once(tmp_path: Path) -> None:
    for url, said in [
        ("http://127.0.0.1:4222", "url must be nats://HOST:PORT"),
        ("nats://me:secret@127.0.0.1:4222", "put USER:PASSWORD in credentials_file"),
    ]:
        with pytest.raises(ValueError, match=said) as refused:
            NatsSink(SinkConfig(name="jetstream", kind="nats", url=url))
        assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match="not a JetStream stream name"):
        NatsSink(SinkConfig(name="jetstream", kind="nats", url="nats://h:1", target="a.b"))


# --- RabbitMQ --------------------------------------------------------------------------


def rabbit_config(
    node: ThrowawayRabbit,
    tmp_path: Path,
    exchange: str,
    *,
    password: str | None = None,
    url: str | None = None,
    timeout_s: float = 10.0,
) -> SinkConfig:
    return SinkConfig(
        name="rabbit",
        kind="rabbitmq",
        url=url or node.address,
        credentials_file=credentials(
            tmp_path, node.user, node.password if password is None else password
        ),
        target=exchange,
        timeout_s=timeout_s,
    )


def exchange_of(request: pytest.FixtureRequest) -> str:
    return f"t.{request.node.name[:60]}.{uuid.uuid4().hex[:6]}"


async def test_rabbitmq_events_arrive_in_order_with_ids_bodies_and_routing_keys(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    events = make_events(40)
    async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
        sink = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange))
        await sink.start()
        try:
            await sink.publish(events[:25])
            await sink.publish(events[25:])
        finally:
            await sink.close()
            await sink.close()
        got = await collector.wait_for(40)
    assert [(m.topic, m.id, m.body) for m in got] == [(e.topic(), e.id, e.body()) for e in events]
    first = got[0].headers
    assert first["content_type"] == CONTENT_TYPE
    assert first["delivery_mode"] == aio_pika.DeliveryMode.PERSISTENT
    assert first["timestamp"] is not None
    assert first["timestamp"].timestamp() == pytest.approx(1735787041, abs=1)  # evt-1's time


async def test_rabbitmq_events_published_again_keep_their_ids(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    events = make_events(30)
    config = rabbit_config(rabbitmq_server, tmp_path, exchange)
    async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
        sink = RabbitSink(config)
        await sink.start()
        await sink.publish(events)
        await sink.close()
        # The hub died before its cursor moved: a new sink sends the last 20 again, then on.
        again = RabbitSink(config)
        await again.start()
        await again.publish(events[10:] + make_events(5, first=31))
        await again.close()
        got = await collector.wait_for(55)
    assert len(got) == 55
    expected = [(e.topic(), e.id, e.body()) for e in events + make_events(5, first=31)]
    assert [(m.topic, m.id, m.body) for m in once_each(got)] == expected


async def test_rabbitmq_down_or_silent_fails_within_timeout_then_recovers(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The shared node stays up; a relay in front of it goes silent, then refuses every
    connection (to the sink, a stopped server), then comes back."""
    exchange = exchange_of(request)
    proxy = LinkProxy(rabbitmq_server.port)
    await proxy.start()
    config = rabbit_config(
        rabbitmq_server,
        tmp_path,
        exchange,
        url=f"amqp://127.0.0.1:{proxy.port}/",
        timeout_s=TIMEOUT_S,
    )
    try:
        async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
            sink = RabbitSink(config)
            await sink.start()
            await sink.publish(make_events(5))

            proxy.pause()
            started = time.monotonic()
            with pytest.raises(SinkError, match="not confirmed within 2 s"):
                await sink.publish(make_events(5, first=6))
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S

            proxy.down()
            proxy.resume()
            started = time.monotonic()
            with pytest.raises(SinkError) as lost:
                await sink.publish(make_events(5, first=6))
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S
            assert not lost.value.permanent
            await sink.close()
            with pytest.raises(SinkError, match=f"RabbitMQ at amqp://127.0.0.1:{proxy.port}/"):
                await RabbitSink(config).start()

            proxy.up()
            sink = RabbitSink(config)
            await sink.start()
            await sink.publish(make_events(10, first=6))
            await sink.close()
            got = await collector.wait_for_id("evt-15")
    finally:
        await proxy.close()
    # Events held by the silent link may have reached the broker: the same ids, again.
    assert [m.id for m in once_each(got)][:5] == [f"evt-{n}" for n in range(1, 6)]
    assert sorted({m.id for m in got}, key=lambda i: int(i[4:])) == [
        f"evt-{n}" for n in range(1, 16)
    ]
    assert [m.id for m in got][-10:] == [f"evt-{n}" for n in range(6, 16)]


@pytest.mark.slow
@pytest.mark.timeout(300)  # two boots of a node of its own: ~20 s here, 5x on a slow machine
async def test_rabbitmq_stopped_and_restarted_keeps_what_it_confirmed(tmp_path: Path) -> None:
    """A node of its own, really stopped and started again: the publish that meets the
    stop fails, a sink made afterwards works, and the durable queue bound beforehand
    holds every event confirmed on either side of the restart."""
    with ThrowawayRabbit() as node:
        config = rabbit_config(node, tmp_path, "outpost", timeout_s=TIMEOUT_S)
        connection = await aio_pika.connect(node.url())
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                "outpost", aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue("kept", durable=True)
            await queue.bind(exchange, "outpost.#")
        sink = RabbitSink(config)
        await sink.start()
        await sink.publish(make_events(5))

        node.stop()
        started = time.monotonic()
        with pytest.raises(SinkError) as lost:
            await sink.publish(make_events(5, first=6))
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert not lost.value.permanent
        await sink.close()

        node.start()  # the same port, database and user
        sink = RabbitSink(config)
        await sink.start()
        await sink.publish(make_events(5, first=6))
        await sink.close()

        connection = await aio_pika.connect(node.url())
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue("kept")
            ids = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                ids.append(message.message_id)
    assert ids == [f"evt-{n}" for n in range(1, 11)]


async def test_rabbitmq_refused_credentials_are_a_permanent_error(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    wrong = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange, password="not-it"))
    started = time.monotonic()
    with pytest.raises(SinkError) as refused:
        await wrong.start()
    assert time.monotonic() - started < SLACK_S
    await wrong.close()
    assert refused.value.permanent
    assert str(refused.value).startswith(
        f"RabbitMQ at {rabbitmq_server.address} refused the credentials (user 'outpost'): "
        "check credentials_file"
    )
    assert rabbitmq_server.password not in str(refused.value)

    right = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange))
    await right.start()
    await right.publish(make_events(1))
    await right.close()


async def test_rabbitmq_exchange_of_another_kind_is_a_permanent_error(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    connection = await aio_pika.connect(rabbitmq_server.url())
    async with connection:
        channel = await connection.channel()
        fanout = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
        sink = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange))
        with pytest.raises(SinkError, match="not a durable topic exchange") as refused:
            await sink.start()
        await sink.close()
        assert refused.value.permanent
        await fanout.delete()


async def test_rabbitmq_unreachable_url_is_an_error_naming_it(tmp_path: Path) -> None:
    url = f"amqp://127.0.0.1:{free_port()}/"  # nothing listens there
    sink = RabbitSink(SinkConfig(name="rabbit", kind="rabbitmq", url=url, timeout_s=TIMEOUT_S))
    started = time.monotonic()
    with pytest.raises(SinkError, match=f"RabbitMQ at {url}: cannot connect") as failed:
        await sink.start()
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert not failed.value.permanent
    await sink.close()


def test_rabbitmq_configuration_mistakes_are_refused_at_once() -> None:
    for url, said in [
        ("http://127.0.0.1:5672/", "url must be amqp://HOST:PORT/VHOST"),
        ("amqp://me:secret@127.0.0.1:5672/", "put USER:PASSWORD in credentials_file"),
    ]:
        with pytest.raises(ValueError, match=said) as refused:
            RabbitSink(SinkConfig(name="rabbit", kind="rabbitmq", url=url))
        assert "secret" not in str(refused.value)


# --- TLS -----------------------------------------------------------------------------

# Under TLS 1.3 the server refuses a missing client certificate after the client's side
# of the handshake is done: the client reads the alert, or finds the socket closed first.
NO_CLIENT_CERTIFICATE = (
    r"cannot connect: .*(bad certificate|certificate required|Broken pipe|reset|closed)"
)


def nats_tls_config(server: ThrowawayNats, **files: str) -> SinkConfig:
    plain = SinkConfig(
        name="jetstream", kind="nats", url=f"tls://127.0.0.1:{server.port}", timeout_s=TIMEOUT_S
    )
    return msgspec.structs.replace(plain, **files)


async def test_nats_over_mutual_tls_publishes_and_refuses_a_wrong_peer(tmp_path: Path) -> None:
    """A server that asks for a client certificate from its own CA: the sink with the
    CA and the hub's certificate publishes; one without a certificate, or trusting
    another CA, is refused, and says so."""
    files = make_tls_files(tmp_path / "tls")
    tls = (
        "tls {\n"
        f'  cert_file: "{files.server_cert}"\n  key_file: "{files.server_key}"\n'
        f'  ca_file: "{files.ca}"\n  verify: true\n  timeout: 5\n'
        "}\n"
    )
    with ThrowawayNats(config=tls) as server:
        mutual = {
            "ca_file": str(files.ca),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        }
        sink = NatsSink(nats_tls_config(server, **mutual))
        await sink.start()
        await sink.publish(make_events(3))  # acknowledged by the stream: stored
        await sink.close()

        no_cert = NatsSink(nats_tls_config(server, ca_file=str(files.ca)))
        with pytest.raises(SinkError, match=NO_CLIENT_CERTIFICATE) as refused:
            await no_cert.start()
        await no_cert.close()
        print("no client certificate:", refused.value)

        stranger = NatsSink(nats_tls_config(server, **(mutual | {"ca_file": str(files.other_ca)})))
        with pytest.raises(SinkError, match="certificate verify failed") as untrusted:
            await stranger.start()
        await stranger.close()
        print("untrusted server:", untrusted.value)

        # Plain NATS to a TLS-only server is refused by the server.
        plain = NatsSink(SinkConfig(name="jetstream", kind="nats", url=server.url, timeout_s=2))
        with pytest.raises(SinkError):
            await plain.start()
        await plain.close()


def test_tls_files_without_tls_or_unreadable_are_refused_at_once(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    with pytest.raises(
        ValueError, match=re.escape("ca_file given, but 'nats://127.0.0.1:4222' does not")
    ):
        NatsSink(
            SinkConfig(name="n", kind="nats", url="nats://127.0.0.1:4222", ca_file=str(files.ca))
        )
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        RabbitSink(
            SinkConfig(name="r", kind="rabbitmq", url="amqps://127.0.0.1/", cert_file=str(files.ca))
        )
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ValueError, match=f"ca_file {missing}: No such file"):
        NatsSink(SinkConfig(name="n", kind="nats", url="tls://127.0.0.1:1", ca_file=str(missing)))
    with pytest.raises(ValueError, match="not a usable PEM"):
        NatsSink(
            SinkConfig(
                name="n",
                kind="nats",
                url="tls://127.0.0.1:1",
                cert_file=str(files.ca),  # a certificate without its key
                key_file=str(files.client_key),
            )
        )
    NatsSink(  # the same files, rightly paired, are taken
        SinkConfig(
            name="n",
            kind="nats",
            url="tls://127.0.0.1:1",
            ca_file=str(files.ca),
            cert_file=str(files.client_cert),
            key_file=str(files.client_key),
        )
    )


async def test_rabbitmq_over_mutual_tls_publishes_and_refuses_a_wrong_peer(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The node's amqps:// listener asks for a client certificate from its own CA: the
    sink with the CA and the hub's certificate publishes, confirmed; one without a
    certificate, or trusting another CA, is refused, and says so."""
    files = rabbitmq_server.tls
    exchange = exchange_of(request)
    mutual = {
        "ca_file": str(files.ca),
        "cert_file": str(files.client_cert),
        "key_file": str(files.client_key),
    }

    def config(**tls: str) -> SinkConfig:
        plain = rabbit_config(
            rabbitmq_server, tmp_path, exchange, url=rabbitmq_server.tls_address, timeout_s=5
        )
        return msgspec.structs.replace(plain, **tls)

    events = make_events(5)
    async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
        sink = RabbitSink(config(**mutual))
        await sink.start()
        await sink.publish(events)  # every one confirmed by the broker
        await sink.close()
        got = await collector.wait_for(5)
    assert [m.id for m in got] == [e.id for e in events]

    for tls, said in [
        ({"ca_file": str(files.ca)}, NO_CLIENT_CERTIFICATE),
        (mutual | {"ca_file": str(files.other_ca)}, "certificate verify failed"),
    ]:
        refused = RabbitSink(config(**tls))
        with pytest.raises(SinkError, match=said) as failed:
            await refused.start()
        await refused.close()
        assert rabbitmq_server.password not in str(failed.value)
        print(f"{sorted(tls)}: {failed.value}")
