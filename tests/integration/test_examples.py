"""The consumers in examples/, each run as its own process with this interpreter, against
real servers: a throwaway nats-server -js, a throwaway RabbitMQ node, and the webhook
receiver posted to by the hub's own webhook sink. Every event reaches them twice with the
same id (as after a hub's crash) and each prints it once, in order.

A child's output is read line by line; a last event published after the repeats marks
the point where every earlier one has been handled."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from hub.sinks.base import Event
from hub.sinks.config import SinkConfig
from hub.sinks.nats import NatsSink
from hub.sinks.rabbitmq import RabbitSink
from hub.sinks.webhook import WebhookSink, signature
from tests.buses import ThrowawayNats, ThrowawayRabbit, delete_stream
from tests.support import REPO, eventually, free_port

EXAMPLES = REPO / "examples"
WAIT_S = 30.0  # an example's start (imports, a connection) on a machine 5x slower
SOURCE = "https://hub.test:8443"
DEVICE = "dev-0123456789ab"
EVENTS = [
    Event("evt-1", "org.outpost.device.online", SOURCE, DEVICE, "2026-01-05T10:00:00.000Z", {}),
    Event(
        "evt-2",
        "org.outpost.task.succeeded",
        SOURCE,
        DEVICE,
        "2026-01-05T10:00:01.000Z",
        {"task_id": "tsk-1", "attempt": 1, "detail": ""},
    ),
    Event(
        "evt-3",
        "org.outpost.rollout.halted",
        SOURCE,
        "",  # fleet-wide
        "2026-01-05T10:00:02.000Z",
        {"rollout_id": 7, "state": "halted", "reason": "a canary failed"},
    ),
]
LAST = Event("evt-4", "org.outpost.device.offline", SOURCE, DEVICE, "2026-01-05T10:00:03Z", {})


@dataclass
class Example:
    """One example running as a child process, and the lines it printed so far."""

    name: str
    process: asyncio.subprocess.Process
    errors: Path
    lines: list[str] = field(default_factory=list)

    async def until(self, text: str) -> None:
        """Read its output until a line holds `text`."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(WAIT_S):
                while not any(text in line for line in self.lines):
                    line = await self.process.stdout.readline()
                    if not line:
                        raise AssertionError(f"{self.name} ended:\n{self.errors.read_text()}")
                    self.lines.append(line.decode().rstrip("\n"))
        except TimeoutError:
            raise AssertionError(
                f"{self.name} printed no {text!r} in {WAIT_S} s: {self.lines}\n"
                f"{self.errors.read_text()}"
            ) from None

    async def stop(self) -> list[str]:
        """End it (SIGTERM); every line it printed, in order."""
        if self.process.returncode is None:
            self.process.terminate()
        rest, _ = await asyncio.wait_for(self.process.communicate(), WAIT_S)
        self.lines += rest.decode().splitlines()
        return self.lines

    def events(self) -> list[str]:
        """The lines it printed for events."""
        return [line for line in self.lines if line.startswith("evt-")]


Runner = Callable[..., Awaitable[Example]]


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Runner]:
    """Start an example (in `tmp_path`, with these arguments); killed after the test."""
    started: list[Example] = []

    async def start(name: str, *args: str) -> Example:
        errors = tmp_path / f"{name}.{len(started)}.stderr"
        with errors.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLES / name),
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        started.append(Example(name, process, errors))
        return started[-1]

    yield start
    for example in started:
        if example.process.returncode is None:
            example.process.kill()
            await example.process.wait()


def line(event: Event, topic: str) -> str:
    return f"{event.id} {event.type} {topic}"


# --- webhooks ------------------------------------------------------------------------


async def test_the_webhook_receiver_checks_signatures_and_prints_each_event_once(
    tmp_path: Path, run: Runner
) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("a-secret-both-sides-hold\n")
    port = free_port()
    receiver = await run("webhook_receiver.py", str(secret), str(port))
    await receiver.until("Running on")  # aiohttp's banner: it listens
    url = f"http://127.0.0.1:{port}/"
    sink = WebhookSink(SinkConfig("hook", "webhook", url, credentials_file=str(secret)))
    await sink.start()
    try:
        await sink.publish(EVENTS)
        await sink.publish(EVENTS)  # again, as after a crash before the cursor moved
    finally:
        await sink.close()
    forged = LAST.body()
    async with aiohttp.ClientSession() as session:
        headers = {"ce-id": LAST.id, "X-Outpost-Signature": signature(b"not-the-secret", forged)}
        async with session.post(url, data=forged, headers=headers) as reply:
            assert reply.status == 401
        headers["X-Outpost-Signature"] = signature(b"a-secret-both-sides-hold", forged)
        async with session.post(url, data=forged, headers=headers) as reply:
            assert reply.status == 204  # answered once printed
    await receiver.stop()
    assert receiver.events() == [line(e, e.subject or "-") for e in [*EVENTS, LAST]]


# --- NATS JetStream ------------------------------------------------------------------


async def _stored(js: JetStreamContext, stream: str, event: Event) -> None:
    """Publish `event` as the hub's sink does, again until the stream stores it: a repeat
    within its duplicate window is dropped (here the shortest JetStream allows, 100 ms)."""
    headers = {"Nats-Msg-Id": event.id}
    while (await js.publish(event.topic(), event.body(), stream=stream, headers=headers)).duplicate:
        pass


async def test_the_nats_consumer_prints_each_event_once_across_restarts(
    nats_server: ThrowawayNats, tmp_path: Path, run: Runner
) -> None:
    stream = f"EXAMPLES_{uuid.uuid4().hex[:8]}"
    client = await nats.connect(
        nats_server.url, user=nats_server.user, password=nats_server.password
    )
    try:
        js = client.jetstream()
        # Made first, as an operator may (the sink takes an existing stream as it is),
        # with a short duplicate window: a repeat is stored, as one the hub sends after
        # the window has passed.
        await js.add_stream(StreamConfig(stream, subjects=["outpost.>"], duplicate_window=0.1))
        creds = nats_server.credentials_file()
        sink = NatsSink(SinkConfig("bus", "nats", nats_server.url, creds, target=stream))
        await sink.start()
        try:
            await sink.publish(EVENTS)
        finally:
            await sink.close()
        for event in [*EVENTS, LAST]:
            await _stored(js, stream, event)  # the repeats, then the last one
        assert (await js.stream_info(stream)).state.messages == 2 * len(EVENTS) + 1

        url = f"nats://{nats_server.user}:{nats_server.password}@127.0.0.1:{nats_server.port}"
        consumer = await run("nats_consumer.py", url, stream)
        await consumer.until(LAST.id)

        async def all_acked() -> bool:
            info = await js.consumer_info(stream, "outpost-example")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(all_acked, timeout=WAIT_S, what="every message acknowledged")
        await consumer.stop()
        assert consumer.events() == [line(e, e.topic()) for e in [*EVENTS, LAST]]

        # Started again: the durable consumer goes on after what it acknowledged, and an
        # old event stored once more is still in its seen table.
        after = Event("evt-5", "org.outpost.device.online", SOURCE, DEVICE, LAST.time, {})
        await _stored(js, stream, EVENTS[0])
        await _stored(js, stream, after)
        again = await run("nats_consumer.py", url, stream)
        await again.until(after.id)
        await again.stop()
        assert again.events() == [line(after, after.topic())]
    finally:
        await client.close()
        await delete_stream(
            nats_server.url, stream, user=nats_server.user, password=nats_server.password
        )


# --- RabbitMQ ------------------------------------------------------------------------


async def test_the_rabbitmq_consumer_prints_each_event_once(
    rabbitmq_server: ThrowawayRabbit, run: Runner
) -> None:
    exchange = f"outpost-examples-{uuid.uuid4().hex[:8]}"
    queue = f"{exchange}-example"  # the example's queue
    connection = await aio_pika.connect(rabbitmq_server.url())
    async with connection:
        channel = await connection.channel()
        # Bound before the events are published, as an integrator does: an exchange
        # drops what no queue takes. The example declares the same queue again.
        declared = await channel.declare_exchange(exchange, "topic", durable=True)
        bound = await channel.declare_queue(queue, durable=True)
        await bound.bind(declared, "outpost.#")
        creds = rabbitmq_server.credentials_file()
        sink = RabbitSink(
            SinkConfig("rabbit", "rabbitmq", rabbitmq_server.address, creds, target=exchange)
        )
        await sink.start()
        try:
            await sink.publish(EVENTS)
            await sink.publish(EVENTS)  # again, as after a crash before the cursor moved
            await sink.publish([LAST])
        finally:
            await sink.close()

        consumer = await run("rabbitmq_consumer.py", rabbitmq_server.url(), exchange)
        await consumer.until(LAST.id)
        await consumer.stop()
        assert consumer.events() == [line(e, e.topic()) for e in [*EVENTS, LAST]]
        await bound.delete(if_unused=False, if_empty=False)
        await declared.delete()
