"""Sinks under faults, with the hub as a real child process: killed with kill -9
mid-drain and started again, no event is lost and, once deduplicated by id, each arrives
once and in order, on a webhook, NATS JetStream and RabbitMQ (a stalled receiver:
test_sink_webhook.py; a bus stopped and restarted: test_sink_nats.py and
test_sink_rabbitmq.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web

from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import Device, HubStore, outbox
from tests.buses import (
    AmqpCollector,
    Received,
    ThrowawayNats,
    ThrowawayRabbit,
    delete_stream,
    once_each,
    read_stream,
    stream_count,
)
from tests.integration.sink_bus_support import outbox_number
from tests.integration.test_sink_webhook import SECRET, Receiver
from tests.replicaset import Replica, current_leader, fleet_broker, replica_folder
from tests.soak import HubProcess
from tests.support import eventually, free_port

EVENTS = 400  # 200 devices enrolled, then relabelled


@pytest.fixture
async def slow_receiver() -> AsyncIterator[Receiver]:
    """A receiver that takes 10 ms an event, so a drain of 400 is under way for seconds."""
    found = Receiver(free_port())

    async def handle(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.01)  # the receiver's own pace, not a synchronisation
        return await found.handle(request)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


def hub_folder(root: Path, receiver: Receiver) -> HubPaths:
    secret = root / "webhook.secret"
    secret.write_text(SECRET)
    return hub_with_sink(
        root,
        'kind = "webhook"\n'
        f'url = "http://127.0.0.1:{receiver.port}/events"\n'
        f'credentials_file = "{secret}"\n',
    )


def hub_with_sink(root: Path, sink: str) -> HubPaths:
    """A hub folder whose one sink, `hook`, is described by the TOML lines `sink`."""
    paths = HubPaths(root / "hub")
    initialise(paths, server_names=[])
    paths.config.write_text(
        f"[hub]\nmqtt_port = {free_port()}\nweb_port = {free_port()}\n"
        f'[[hub.sinks]]\nname = "hook"\ntimeout_s = 5\n{sink}'
    )
    return paths


async def write_events(database: Path | str, count: int, *, first: int = 0) -> list[int]:
    """Changes made beside the running hub (as another replica would), each with its
    event: devices enrolled, then relabelled. The outbox's ids after.

    First it waits for the hub's sink `hook` to have its cursor: a new sink starts at the
    outbox's end, so a change written before the hub opened it is, rightly, never sent
    (a loaded machine's hub opened it after the first changes, and the checks waited for
    events that were never the sink's)."""
    store = HubStore(database)
    store.publish_events()
    try:

        async def opened() -> bool:
            return any(c.sink == "hook" for c in await store.run(outbox.cursors))

        await eventually(opened, timeout=60, what="the hub's sink cursor")
        now = time.time()
        for n in range(first, first + count):
            device = Device(
                f"dev-fault{n:07d}", "generic", {}, False, None, None, None, None, {}, {},
                now, None, None, None,
            )  # fmt: skip
            await store.add_device(device)
        for n in range(first, first + count):
            await store.update_device(f"dev-fault{n:07d}", labels={"line": "2"}, now=now)
        return [e.id for e in await store.run(outbox.after, 0, 100_000)]
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kill_9_mid_drain_loses_nothing_and_keeps_order(
    tmp_path: Path, slow_receiver: Receiver
) -> None:
    paths = hub_folder(tmp_path, slow_receiver)
    hub = HubProcess(paths, tmp_path)
    await hub.start()
    try:
        written = await write_events(paths.database, EVENTS // 2)
        assert len(written) == EVENTS

        async def under_way() -> bool:
            return len(slow_receiver.accepted) >= EVENTS // 8

        await eventually(under_way, timeout=60, what="the drain under way")
        assert len(slow_receiver.accepted) < EVENTS, "the drain ended before the kill"
        hub.stop()  # SIGKILL, mid-drain
        at_kill = len(slow_receiver.accepted)
        await hub.start()

        async def all_there() -> bool:
            return set(slow_receiver.ids()) >= set(written)

        await eventually(all_there, timeout=120, what="every event after the restart")
    finally:
        hub.stop()

    received = slow_receiver.ids()
    repeats = len(received) - len(set(received))
    first_seen = list(dict.fromkeys(received))
    # Exactly once after dedupe, nothing invented, in outbox (commit) order.
    assert first_seen == written
    # Per device: enrolled, then relabelled.
    kinds = collections.defaultdict(list)
    for event in slow_receiver.accepted:
        kinds[event["subject"]].append(event["type"].rsplit(".", 1)[1])
    assert {tuple(dict.fromkeys(k)) for k in kinds.values()} == {("enrolled", "relabelled")}
    assert slow_receiver.bad_signatures == 0
    # At least once: what was sent since the last cursor move before the kill came again.
    print(f"kill -9 after {at_kill} of {EVENTS} events; {repeats} delivered twice")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_replicas_drain_once_and_the_survivor_takes_over(
    tmp_path: Path, slow_receiver: Receiver, pg_url: str
) -> None:
    """Only the leader drains (its cursor moves fenced by its lease); kill it mid-drain
    and the other replica takes over: every event, once after dedupe, in order."""
    ids = ("a", "b")
    primary, broker, broker_port = await fleet_broker(tmp_path / "pki-source", ids)
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET)
    settings = (
        f'broker = "mqtts://127.0.0.1:{broker_port}"\n'
        f"db_url = {json.dumps(pg_url)}\n"
        "[[hub.sinks]]\n"
        'name = "hook"\nkind = "webhook"\n'
        f'url = "http://127.0.0.1:{slow_receiver.port}/events"\n'
        f'credentials_file = "{secret}"\ntimeout_s = 5\n'
    )
    replicas = [
        Replica(r, replica_folder(primary, tmp_path / r, r, settings), tmp_path) for r in ids
    ]
    try:
        await asyncio.gather(*(r.start() for r in replicas))

        async def led() -> bool:
            holder, _ = current_leader(pg_url)
            return bool(holder)

        await eventually(led, timeout=30, what="a leader")
        written = await write_events(pg_url, EVENTS // 2)

        async def under_way() -> bool:
            return len(slow_receiver.accepted) >= EVENTS // 8

        await eventually(under_way, timeout=60, what="the drain under way")
        holder, _ = current_leader(pg_url)
        leader = next(r for r in replicas if holder.startswith(r.holder))
        leader.kill()

        async def all_there() -> bool:
            return set(slow_receiver.ids()) >= set(written)

        await eventually(all_there, timeout=120, what="every event after the takeover")
    finally:
        for replica in replicas:
            replica.kill()
        await broker.stop()
    assert list(dict.fromkeys(slow_receiver.ids())) == written


BUS_ROUNDS = 8  # of 100 devices enrolled then relabelled: 1,600 events in all


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("bus", ["nats", "rabbitmq"])
async def test_kill_9_mid_drain_to_a_bus_loses_nothing_and_keeps_order(
    tmp_path: Path, bus: str, request: pytest.FixtureRequest
) -> None:
    """Changes keep coming while the hub drains them to the bus; kill -9 once a quarter
    has arrived, start it again: the consumer holds every event, in commit order once
    deduplicated by id (JetStream dedupes by Nats-Msg-Id itself, RabbitMQ leaves it to
    the consumer)."""
    name = f"faults{uuid.uuid4().hex[:8]}"
    seen: Callable[[], Awaitable[list[Received]]]
    async with contextlib.AsyncExitStack() as stack:
        if bus == "nats":
            server: ThrowawayNats = request.getfixturevalue("nats_server")
            sink = (
                f'kind = "nats"\nurl = "{server.url}"\ntarget = "{name}"\n'
                f'credentials_file = "{server.credentials_file()}"\n'
            )
            stack.push_async_callback(
                delete_stream, server.url, name, user=server.user, password=server.password
            )

            async def seen() -> list[Received]:
                if not await stream_exists(server, name):
                    return []
                return await read_stream(
                    server.url, name, user=server.user, password=server.password, timeout=60
                )
        else:
            node: ThrowawayRabbit = request.getfixturevalue("rabbitmq_server")
            sink = (
                f'kind = "rabbitmq"\nurl = "{node.address}"\ntarget = "{name}"\n'
                f'credentials_file = "{node.credentials_file()}"\n'
            )
            # Bound before the hub publishes: RabbitMQ drops what no queue takes.
            collector = await stack.enter_async_context(AmqpCollector(node.url(), name))

            async def seen() -> list[Received]:
                return list(collector.messages)

        paths = hub_with_sink(tmp_path, sink)
        hub = HubProcess(paths, tmp_path)
        stack.callback(hub.stop)
        await hub.start()
        writer = asyncio.create_task(
            rounds_of_changes(paths.database, BUS_ROUNDS), name="changes beside the hub"
        )
        stack.push_async_callback(cancelled, writer)

        async def under_way() -> bool:
            return len(await seen()) >= BUS_ROUNDS * 200 // 4

        await eventually(under_way, timeout=120, what="a quarter of the events on the bus")
        hub.stop()  # SIGKILL, mid-drain
        at_kill = len(await seen())
        await hub.start()
        written = await writer

        wanted = list(written)
        missing: list[int] = []

        async def all_there() -> bool:
            held = {outbox_number(m.id) for m in await seen()}
            missing[:] = [i for i in wanted if i not in held]
            return not missing

        try:
            await eventually(all_there, timeout=120, what="every event after the restart")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {len(missing)} of {len(wanted)} missing ({missing[:10]}...), "
                f"{at_kill} on the bus at the kill"
            ) from exc
        received = await seen()

    assert at_kill < len(written), "the drain ended before the kill"
    assert [outbox_number(m.id) for m in once_each(received)] == written
    by_device = collections.defaultdict(list)
    for message in once_each(received):
        body = json.loads(message.body)
        by_device[body["subject"]].append(body["type"].rsplit(".", 1)[1])
        assert message.topic.endswith(body["subject"])
    assert set(map(tuple, by_device.values())) == {("enrolled", "relabelled")}
    repeats = len(received) - len(once_each(received))
    print(f"{bus}: kill -9 after {at_kill} of {len(written)} events; {repeats} delivered twice")


async def rounds_of_changes(database: Path, rounds: int) -> list[int]:
    """`rounds` of 100 devices enrolled then relabelled, one after the other; the
    outbox's ids after."""
    for number in range(rounds):
        written = await write_events(database, 100, first=number * 100)
    return written


async def stream_exists(server: ThrowawayNats, name: str) -> bool:
    try:
        await stream_count(server.url, name, user=server.user, password=server.password)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
