"""Metric roll-ups from an agent that restarts more often than `metrics_interval`
(issue 15 item 6): the roll-up window outlives the process, so the roll-ups still reach
the hub. A graceful stop writes its partial window (no count lost); after a kill the next
process continues the window and closes it out (the killed process's in-memory counts
are lost, by design).

The agents run against a real hub. What is asserted is what the roll-ups hold, not when
they were written: each agent lives half an interval once connected, but on a slow
machine it may live longer and write more roll-ups, which the assertions allow."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from tests.conftest import Enroller
from tests.integration.test_local_inference import sample_of
from tests.integration.test_model_metrics import VIBRATION, inferred, rollups_at_hub
from tests.integration.test_store_forward import write_agent_settings
from tests.local_api import LocalClient
from tests.support import SHIPPED_MODELS, AgentProcess, eventually

INTERVAL = 3.0
LIFE = 1.5  # how long each agent runs once connected: half the interval
KEY = f"{VIBRATION}@1.0.0"

pytestmark = pytest.mark.timeout(300)


def stored_rollups(paths: DevicePaths) -> dict[int, dict[str, Any]]:
    """The roll-ups still in the agent's metrics stream (not yet acknowledged by the
    hub), read without the product's code while no agent runs."""
    if not paths.store.exists():
        return {}
    uri = f"file:{paths.store}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute("SELECT seq, body FROM records WHERE stream = 'metrics'").fetchall()
    bodies = {seq: msgpack.unpackb(body) for seq, body in rows}
    return {seq: body for seq, body in bodies.items() if body.get("kind") == "rollup"}


def every_rollup(hub: Hub, paths: DevicePaths, device_id: str) -> dict[int, dict[str, Any]]:
    """Every roll-up the agent wrote: those the hub holds, and those it has yet to get
    (a record leaves the agent's store only once the hub stored it)."""
    return {**dict(rollups_at_hub(hub, device_id)), **stored_rollups(paths)}


async def enrolled(enroll_device: Enroller) -> tuple[DevicePaths, str]:
    paths, identity = await enroll_device()
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    write_agent_settings(paths, f"metrics_interval = {INTERVAL}\n")
    return paths, identity.device_id


async def connected_agent(
    hub: Hub, agents: Callable[..., AgentProcess], paths: DevicePaths
) -> AgentProcess:
    """Start an agent; return once it said hello to the hub (all its tasks run then)."""
    ingest = hub.parts.ingest
    before = ingest.outcomes[("hello", "accepted")]
    agent = agents(paths)

    async def hello() -> bool:
        assert agent.process.poll() is None, agent.output()
        return ingest.outcomes[("hello", "accepted")] > before

    await eventually(hello, timeout=60, every=0.1, what="the agent's hello")
    return agent


async def flap(
    hub: Hub,
    agents: Callable[..., AgentProcess],
    paths: DevicePaths,
    stop: signal.Signals,
    *,
    inferences: int = 0,
) -> None:
    """One short life of an agent: connect, answer `inferences` requests, live half an
    interval, then stop by `stop`."""
    agent = await connected_agent(hub, agents, paths)
    client = LocalClient(paths.socket)
    try:
        fault = sample_of(SHIPPED_MODELS[0]).input
        for _ in range(inferences):
            status, answer = await client.infer(VIBRATION, {"input": fault, "dtype": "int8"})
            assert status == 200, answer
    finally:
        await client.close()
    await asyncio.sleep(LIFE)  # the agent's life, not a synchronisation
    agent.signal(stop)
    code = await asyncio.to_thread(agent.wait, 60)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL), agent.output()


async def reach_the_hub(
    hub: Hub,
    agents: Callable[..., AgentProcess],
    paths: DevicePaths,
    device_id: str,
    seqs: set[int],
) -> None:
    """Start one more agent and wait until the hub holds the roll-ups `seqs`."""
    await connected_agent(hub, agents, paths)

    async def arrived() -> bool:
        return seqs <= {seq for seq, _ in rollups_at_hub(hub, device_id)}

    await eventually(arrived, timeout=60, every=0.2, what="the roll-ups at the hub")


async def test_graceful_restarts_faster_than_the_interval_lose_no_counts(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, device_id = await enrolled(enroll_device)
    stops = 3
    for n in range(stops):
        await flap(hub, agents, paths, signal.SIGTERM, inferences=n + 1)
        # Each stop wrote its partial window, and left no window open for the next.
        rollups = every_rollup(hub, paths, device_id)
        assert len(rollups) >= n + 1, rollups
        assert inferred(list(rollups.items()), KEY) == sum(range(1, n + 2)), rollups
        assert not paths.metrics_window.exists()

    for body in rollups.values():  # what is measured at roll-up time is there too
        assert body["period_s"] > 0
        assert body["load"]["rss_bytes"] > 0
        assert set(body["store"]) == {"results", "events", "metrics"}
        assert set(body["tasks"]) == {"done", "failed", "queued", "running"}

    await reach_the_hub(hub, agents, paths, device_id, set(rollups))
    assert inferred(rollups_at_hub(hub, device_id), KEY) >= 6


async def test_killed_restarts_faster_than_the_interval_still_roll_up(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, device_id = await enrolled(enroll_device)
    kills = 4  # twice the interval in all, at least: a window must close
    for _ in range(kills):
        await flap(hub, agents, paths, signal.SIGKILL)

    rollups = every_rollup(hub, paths, device_id)
    assert rollups, "no roll-up from agents killed before each interval ended"
    assert paths.metrics_window.exists()  # the last kill left its window open
    for body in rollups.values():
        # Each closes a whole window, however many processes it spanned: none of them
        # rolled up early (a start would otherwise roll up at once, on every restart).
        assert body["period_s"] >= INTERVAL - 0.01, rollups
        assert body["load"]["rss_bytes"] > 0
        assert set(body["store"]) == {"results", "events", "metrics"}

    await reach_the_hub(hub, agents, paths, device_id, set(rollups))
