"""Store and forward end to end: real agents, the real hub and broker, real SQLite files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from edge.identity import DevicePaths
from hub.app import Hub
from tests.conftest import Enroller
from tests.databases import hub_sql
from tests.local_api import LocalClient
from tests.support import AgentProcess, eventually


def hub_records(hub: Hub, device_id: str, stream: str = "results") -> list[tuple[int, Any]]:
    """What the hub's database holds for a device and stream, in seq order."""
    rows = hub_sql(
        hub.config.database(hub.paths.database),
        "SELECT seq, body FROM records WHERE device_id = ? AND stream = ? ORDER BY seq",
        (device_id, stream),
    )
    return [(seq, msgpack.unpackb(body)) for seq, body in rows]


async def wait_socket(paths: DevicePaths, agent: AgentProcess) -> LocalClient:
    async def listening() -> bool:
        assert agent.process.poll() is None, agent.output()
        return paths.socket.exists()

    await eventually(listening, timeout=10, what="the agent's local API")
    return LocalClient(paths.socket)


async def produce(
    client: LocalClient, total: int, *, per_call: int = 100, start: int = 0
) -> list[int]:
    """Post `total` numbered results; return the numbers the agent confirmed."""
    confirmed: list[int] = []
    for first in range(start, start + total, per_call):
        numbers = list(range(first, min(first + per_call, start + total)))
        status, body = await client.append("results", [{"n": n, "pad": "x" * 40} for n in numbers])
        assert status == 201, body
        confirmed += numbers
    return confirmed


def write_agent_settings(paths: DevicePaths, text: str) -> None:
    paths.config.write_text("[agent]\n" + text)


@pytest.mark.timeout(300)
async def test_ten_thousand_results_made_offline_arrive_once_in_order(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    assert hub.parts.broker is not None
    paths, identity = await enroll_device()
    await hub.parts.broker.stop()  # the site's link is down
    agent = agents(paths, heartbeat_interval=1.0)
    client = await wait_socket(paths, agent)
    try:
        confirmed = await produce(client, 10_000, per_call=250)
        assert hub_records(hub, identity.device_id) == []

        await hub.parts.broker.start()  # the link returns

        async def all_there() -> bool:
            return len(hub_records(hub, identity.device_id)) >= 10_000

        await eventually(all_there, timeout=120, every=0.5, what="10,000 results at the hub")
        held = hub_records(hub, identity.device_id)
        assert [seq for seq, _ in held] == list(range(1, 10_001))
        assert [body["n"] for _, body in held] == confirmed
        status = await client.status()

        async def drained() -> bool:
            fill = (await client.status())["store"]["streams"]["results"]
            return bool(fill["records"] == 0 and fill["acked_seq"] == 10_000)

        await eventually(drained, timeout=20, what="the agent to forget acknowledged results")
        assert status["store"]["bytes_written_per_record"] > 0
    finally:
        await client.close()


async def test_full_results_stream_refuses_work_through_the_local_api(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    assert hub.parts.broker is not None
    paths, _ = await enroll_device()
    write_agent_settings(paths, "[agent.bounds.results]\nmax_records = 50\n")
    await hub.parts.broker.stop()
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    try:
        await produce(client, 50, per_call=25)
        status, body = await client.append("results", [{"n": 50}])
        fill = (await client.status())["store"]
    finally:
        await client.close()

    assert status == 507
    assert body["error"]["code"] == "stream_full"
    assert "refusing new work" in body["error"]["message"]
    assert fill["streams"]["results"]["records"] == 50
    assert fill["counters"]["refused.results"] == 1


async def test_agent_comes_up_over_a_damaged_store(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, _identity = await enroll_device()
    paths.store.write_bytes(b"\x00garbage, not SQLite\x00" * 512)

    agent = agents(paths)
    client = await wait_socket(paths, agent)
    try:
        status, _ = await client.append("results", [{"n": 1}])
    finally:
        await client.close()

    assert status == 201
    aside = list(paths.root.glob("store.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"\x00garbage")
    assert "is damaged" in agent.output()
    # What the agent writes is its own: the store holds results, nobody else reads it.
    assert paths.store.stat().st_mode & 0o777 == 0o600
