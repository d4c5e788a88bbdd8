"""Store and forward under faults: kill -9 of the agent, broker and hub restarts
mid-drain, and the upload rate cap."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import uuid
from collections.abc import Callable

import pytest

from hub.app import Hub
from tests.conftest import HUB_TASKS, Enroller
from tests.integration.test_store_forward import hub_records, wait_socket, write_agent_settings
from tests.linkproxy import LinkProxy, Shape
from tests.local_api import LocalClient
from tests.support import AgentProcess, eventually


async def _producer(client: LocalClient, confirmed: set[str], stop: asyncio.Event) -> None:
    """Post results until told to stop or the agent dies; keep what it confirmed."""
    while not stop.is_set():
        batch = [{"id": uuid.uuid4().hex} for _ in range(random.randint(1, 40))]
        try:
            status, _ = await client.append("results", batch)
        except Exception:  # the agent was killed mid-request: nothing was confirmed
            return
        if status == 201:
            confirmed.update(r["id"] for r in batch)


def _ids_at_hub(hub: Hub, device_id: str) -> list[str]:
    return [body["id"] for _, body in hub_records(hub, device_id)]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_of_the_agent_loses_nothing_confirmed_and_doubles_nothing(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    write_agent_settings(paths, "[agent.sync]\nbatch_records = 50\nack_timeout_s = 2\n")
    confirmed: set[str] = set()
    rng = random.Random(20261125)
    rounds = 12
    for _ in range(rounds):
        paths.socket.unlink(missing_ok=True)  # the last agent's, dead: wait for the next one's
        agent = agents(paths, heartbeat_interval=1.0)
        client = await wait_socket(paths, agent)
        stop = asyncio.Event()
        before = len(confirmed)
        producing = asyncio.create_task(_producer(client, confirmed, stop))

        async def appended(before: int = before, producing: asyncio.Task[None] = producing) -> bool:
            assert not producing.done(), "the producer stopped before its first append"
            return len(confirmed) > before

        # Each round dies after an append was confirmed, however slow the machine: then
        # at a random point, while producing, while draining, or both.
        await eventually(appended, timeout=30, what="an append confirmed in this round")
        await asyncio.sleep(rng.uniform(0.05, 1.5))  # the fault's timing, on purpose
        agent.signal(signal.SIGKILL)
        agent.wait(10)
        stop.set()
        await producing
        await client.close()

    agent = agents(paths, heartbeat_interval=1.0)
    client = await wait_socket(paths, agent)
    await client.close()

    async def drained() -> bool:
        return confirmed <= set(_ids_at_hub(hub, identity.device_id))

    await eventually(drained, timeout=60, every=0.5, what="every confirmed result at the hub")
    ids = _ids_at_hub(hub, identity.device_id)
    assert len(ids) == len(set(ids)), "a record reached the hub twice"
    seqs = [seq for seq, _ in hub_records(hub, identity.device_id)]
    assert seqs == sorted(seqs)
    assert len(confirmed) >= rounds  # every round was killed after confirming some


async def _offline_backlog(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    count: int,
    settings: str = "",
) -> tuple[str, LocalClient]:
    assert hub.parts.broker is not None
    paths, identity = await enroll_device()
    write_agent_settings(paths, settings)
    await hub.parts.broker.stop()
    agent = agents(paths, heartbeat_interval=1.0)
    client = await wait_socket(paths, agent)
    for first in range(0, count, 200):
        status, _ = await client.append(
            "results", [{"n": n, "pad": "y" * 100} for n in range(first, first + 200)]
        )
        assert status == 201
    return identity.device_id, client


async def _mid_drain(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> tuple[str, LocalClient]:
    """A device with 4,000 results made offline, its drain under way (paced, to last)."""
    device_id, client = await _offline_backlog(
        hub, enroll_device, agents, 4000, "[agent.sync]\nrate_bytes_per_s = 200000\n"
    )
    assert hub.parts.broker is not None
    await hub.parts.broker.start()

    async def some() -> bool:
        return len(hub_records(hub, device_id)) > 200

    await eventually(some, timeout=30, what="the drain to start")
    return device_id, client


async def _all_held_once_in_order(hub: Hub, device_id: str) -> None:
    async def all_there() -> bool:
        return len(hub_records(hub, device_id)) >= 4000

    await eventually(all_there, timeout=90, every=0.5, what="all 4000 after the restart")
    held = hub_records(hub, device_id)
    assert [seq for seq, _ in held] == list(range(1, 4001))
    assert [body["n"] for _, body in held] == list(range(4000))


async def test_broker_restart_mid_drain(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    device_id, client = await _mid_drain(hub, enroll_device, agents)
    assert hub.parts.broker is not None
    await hub.parts.broker.stop()
    await hub.parts.broker.start()

    try:
        await _all_held_once_in_order(hub, device_id)
    finally:
        await client.close()


async def test_hub_restart_mid_drain(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    device_id, client = await _mid_drain(hub, enroll_device, agents)
    # A second hub on the same data folder replaces the first, as after a crash.
    await hub_stop(hub)
    second = Hub(hub.paths, hub.config)
    task = asyncio.create_task(second.run())
    try:
        await asyncio.wait_for(second.ready.wait(), 20)
        await _all_held_once_in_order(second, device_id)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def hub_stop(hub: Hub) -> None:
    """Stop the fixture's hub early (its teardown then has nothing left to stop)."""
    task = HUB_TASKS[id(hub)]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_upload_rate_cap_holds(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    cap = 30_000
    device_id, client = await _offline_backlog(
        hub,
        enroll_device,
        agents,
        2400,
        # Small batches, so the first fits in the one-second burst (see the rate below);
        # plain, as compressed these records would be too few bytes to time a rate by
        # (the cap counts the bytes sent, packed or not).
        f"[agent.sync]\nrate_bytes_per_s = {cap}\nbatch_bytes = 4096\ncompression = []\n",
    )
    assert hub.parts.broker is not None
    await hub.parts.broker.start()

    async def all_there() -> bool:
        return len(hub_records(hub, device_id)) >= 2400

    await eventually(all_there, timeout=60, every=0.1, what="the capped drain")
    sent = (await client.status())["sync"]["bytes_sent"]
    await client.close()
    # The drain's own span, as the hub saw it arrive (the agent's reconnect back-off
    # before it is not part of the rate).
    with contextlib.closing(sqlite3.connect(f"file:{hub.paths.database}?mode=ro", uri=True)) as db:
        first, last = db.execute(
            "SELECT MIN(received_at), MAX(received_at) FROM records WHERE device_id = ?",
            (device_id,),
        ).fetchone()
    span = last - first

    # One second's worth (the burst, which holds the first batch) goes at once, at
    # `first`; every later byte waits for the cap, so the span carries the rest.
    rate = (sent - cap) / span
    assert span > 5, "the drain was too short to measure a rate"
    # Never over the cap: the promise, which holds on a machine of any speed (a slow or
    # loaded one only lowers the rate, so no floor is asserted here; the pacing itself
    # is checked exactly, on a fake clock, in tests/unit/test_pacing.py).
    assert rate <= 1.1 * cap, (rate, sent, span)


async def test_a_slow_link_drains_in_batches_its_acks_outrun(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """At 40 kB/s, four batches of 64 KiB take 6.5 s, over the 2 s ack timeout: the
    batches shrink (edge/batchsize.py) and every record arrives, once."""
    proxy = LinkProxy(hub.config.mqtt_port)
    await proxy.start()
    proxy.shape(Shape(rate_bytes_per_s=40_000))
    try:
        paths, identity = await enroll_device()
        write_agent_settings(
            paths,
            f'broker = "mqtts://127.0.0.1:{proxy.port}"\n'
            # Plain: compressed, these records would be too few bytes to slow anything.
            "[agent.sync]\nack_timeout_s = 2\ncompression = []\n",
        )
        proxy.down()  # a backlog first, sent as the link comes back
        agent = agents(paths, heartbeat_interval=1.0)
        client = await wait_socket(paths, agent)
        for first in range(0, 1600, 200):  # about 210 kB in all
            status, _ = await client.append(
                "results", [{"n": n, "pad": "y" * 100} for n in range(first, first + 200)]
            )
            assert status == 201
        proxy.up()

        async def all_there() -> bool:
            return len(hub_records(hub, identity.device_id)) >= 1600

        await eventually(all_there, timeout=120, every=0.2, what="the drain over the slow link")
        budget = (await client.status())["sync"]["batch_bytes"]
        await client.close()
    finally:
        await proxy.close()
    numbers = [body["n"] for _, body in hub_records(hub, identity.device_id)]
    assert numbers == list(range(1600))  # each once, in order
    assert budget < 64 * 1024, budget
