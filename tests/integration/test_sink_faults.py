"""A webhook sink under faults, with the hub as a real child process: killed with kill -9
mid-drain and started again, no event is lost and, once deduplicated by id, each arrives
once and in order (a stalled receiver: test_sink_webhook.py)."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import Device, HubStore, outbox
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
    paths = HubPaths(root / "hub")
    initialise(paths, server_names=[])
    secret = root / "webhook.secret"
    secret.write_text(SECRET)
    paths.config.write_text(
        f"[hub]\nmqtt_port = {free_port()}\nweb_port = {free_port()}\n"
        "[[hub.sinks]]\n"
        'name = "hook"\nkind = "webhook"\n'
        f'url = "http://127.0.0.1:{receiver.port}/events"\n'
        f'credentials_file = "{secret}"\ntimeout_s = 5\n'
    )
    return paths


async def write_events(database: Path | str, count: int) -> list[int]:
    """Changes made beside the running hub (as another replica would), each with its
    event: devices enrolled, then relabelled. The outbox's ids after."""
    store = HubStore(database)
    store.publish_events()
    try:
        now = time.time()
        for n in range(count):
            device = Device(
                f"dev-fault{n:07d}", "generic", {}, False, None, None, None, None, {}, {},
                now, None, None, None,
            )  # fmt: skip
            await store.add_device(device)
        for n in range(count):
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
