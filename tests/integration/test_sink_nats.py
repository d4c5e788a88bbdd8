"""The NATS JetStream sink against a real, throwaway nats-server: events arrive in order
with their ids, bodies and subjects, in a stream on disk that the sink made; publishing
them again stores them once; a stream an operator made is taken as it is, its refusal
of new messages is a SinkError after which nothing later was stored, and an event too
large for it is refused alone; a server that is down or silent is a SinkError within
timeout_s, and publishing works again once it is back; refused credentials, or a user
that may not make the stream, are a permanent SinkError that says so; an unreachable URL
is a SinkError naming it; a mistaken URL or stream name is refused at once. (Over TLS:
test_sink_bus_tls.py.)"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from hub.sinks.base import CONTENT_TYPE, EventRefusedError, SinkError
from hub.sinks.config import SinkConfig
from hub.sinks.nats import NatsSink
from tests.buses import ThrowawayNats, delete_stream, read_stream, stream_count
from tests.integration.sink_bus_support import (
    SLACK_S,
    TIMEOUT_S,
    credentials,
    make_events,
)
from tests.linkproxy import LinkProxy
from tests.support import free_port


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
