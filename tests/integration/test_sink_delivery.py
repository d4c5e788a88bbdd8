"""Sinks side by side in one real hub, each to a real HTTP receiver: a healthy sink
delivers everything while another is down; `types` wildcards and a `selector` from
hub.toml decide what a sink gets; a webhook's 408 and 429 are retried, never
dead-lettered; every task ending (failed, expired, cancelled) and a late result reach a
sink; /metrics shows each sink's lag and counts, and a replica that stops leading stops
showing them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hub.app import Hub
from hub.leadership import Leadership
from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds
from hub.sinks.service import SinkService
from hub.store import HubStore, tasks
from hub.store.sql import Sql
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_sink_webhook import (
    INPUT,
    SECRET,
    VIB,
    Receiver,
    outbox_ids,
    start_agent,
)
from tests.support import AgentProcess, add_device, eventually, free_port


@contextlib.asynccontextmanager
async def serving(found: Receiver, answers: list[int] | None = None) -> AsyncIterator[Receiver]:
    """`found` listening on its port; `answers`: statuses given, in turn, before it
    takes events as usual."""
    pending = list(answers or [])

    async def handle(request: web.Request) -> web.Response:
        if pending:
            return web.Response(status=pending.pop(0), text="not now")
        return await found.handle(request)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    try:
        yield found
    finally:
        await runner.cleanup()


@pytest.fixture
async def everything() -> AsyncIterator[Receiver]:
    """The receiver of `hook`, a sink of every event."""
    async with serving(Receiver(free_port())) as found:
        yield found


@pytest.fixture
async def north() -> AsyncIterator[Receiver]:
    """The receiver of `north`: device and roll-out events of devices at site north."""
    async with serving(Receiver(free_port())) as found:
        yield found


@pytest.fixture
async def flaky() -> AsyncIterator[Receiver]:
    """The receiver of `flaky`: answers 408, then 429, then takes events."""
    async with serving(Receiver(free_port()), answers=[408, 429]) as found:
        yield found


@pytest.fixture
def hub_settings(everything: Receiver, north: Receiver, flaky: Receiver, tmp_path: Path) -> str:
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")

    def hook(name: str, port: int, extra: str = "") -> str:
        return (
            f'[[hub.sinks]]\nname = "{name}"\nkind = "webhook"\n'
            f'url = "http://127.0.0.1:{port}/events"\n'
            f'credentials_file = "{secret}"\ntimeout_s = 5\n{extra}'
        )

    return (
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"
        + hook("hook", everything.port)
        + hook("down", free_port())  # nobody listens there
        + hook(
            "north",
            north.port,
            'types = ["org.outpost.device.*", "org.outpost.rollout.*"]\n'
            'selector = { site = "north" }\n',
        )
        + hook("flaky", flaky.port)
    )


async def sink_states(api: ApiClient, token: str) -> dict[str, dict[str, Any]]:
    reply = await api.call("GET", "/api/v1/sinks", token=token)
    assert reply.status == 200, reply.body
    return {s["name"]: s for s in reply.body["items"]}


async def test_a_healthy_sink_delivers_everything_beside_one_that_is_down(
    hub: Hub, api: ApiClient, everything: Receiver
) -> None:
    token = await api.token("operator")
    for n in range(20):
        await add_device(hub, f"dev-side{n:08d}")

    async def delivered_while_the_other_fails() -> bool:
        written = await outbox_ids(hub.parts.store)
        sinks = await sink_states(api, token)
        return (
            everything.ids() == written
            and sinks["down"]["state"] == "failing"
            and sinks["hook"]["lag_events"] == 0
        )

    await eventually(delivered_while_the_other_fails, timeout=60, what="hook caught up")
    sinks = await sink_states(api, token)
    assert sinks["down"]["delivered"] == 0
    assert sinks["down"]["lag_events"] == len(await outbox_ids(hub.parts.store))
    assert sinks["down"]["retried"] >= 1
    assert "127.0.0.1" in sinks["down"]["error"]
    assert sinks["hook"]["delivered"] == len(everything.ids())


async def test_types_wildcards_and_selector_from_hub_toml_decide_what_a_sink_gets(
    hub: Hub, api: ApiClient, everything: Receiver, north: Receiver
) -> None:
    admin = await api.token("admin", subject="alice")
    await add_device(hub, "dev-south0000001", labels={"site": "south"})

    async def north_caught_up() -> bool:
        return bool((await sink_states(api, admin))["north"]["lag_events"] == 0)

    # The drain has read the devices' labels by now: a device enrolled next, with its
    # labels, must still be judged by them (not dropped as unknown).
    await eventually(north_caught_up, timeout=60, what="north past the south device")
    await add_device(hub, "dev-north0000001", labels={"site": "north"})
    moved = await api.call(
        "PATCH", "/api/v1/devices/dev-south0000001", token=admin, body={"labels": {"site": "x"}}
    )
    assert moved.status == 200, moved.body
    kept = await api.call(
        "PATCH",
        "/api/v1/devices/dev-north0000001",
        token=admin,
        body={"labels": {"site": "north", "line": "2"}},
    )
    assert kept.status == 200, kept.body
    # A task for the north device: task.* is not among north's types.
    task = {"model": VIB, "input": INPUT, "dtype": "int8"}
    submitted = await api.call(
        "POST",
        "/api/v1/tasks",
        token=admin,
        body={
            "tasks": [{**task, "target": {"device": "dev-north0000001"}, "wait_for_model": True}]
        },
    )
    assert submitted.status == 202, submitted.body

    async def all_at_hook() -> bool:
        written = await outbox_ids(hub.parts.store)
        return bool(written) and everything.ids() == written

    await eventually(all_at_hook, timeout=60, what="every event at hook")
    sinks = await sink_states(api, admin)
    await eventually(north_caught_up, timeout=60, what="north caught up")
    wanted = [
        e["id"]
        for e in everything.accepted
        if e["type"].startswith(("org.outpost.device.", "org.outpost.rollout."))
        and e.get("subject") in ("dev-north0000001", None)
    ]
    got = [(e["type"], e.get("subject")) for e in north.accepted]
    assert [e["id"] for e in north.accepted] == wanted, got
    assert ("org.outpost.device.enrolled", "dev-north0000001") in got
    assert ("org.outpost.device.relabelled", "dev-north0000001") in got
    assert all(s != "dev-south0000001" for _, s in got)
    assert any(e["type"].startswith("org.outpost.task.") for e in everything.accepted)
    assert sinks["north"]["dead_lettered"] == 0


async def test_webhook_408_and_429_are_retried_never_dead_lettered(
    hub: Hub, api: ApiClient, flaky: Receiver
) -> None:
    token = await api.token("operator")
    await add_device(hub, "dev-flaky0000001")
    await add_device(hub, "dev-flaky0000002")

    async def delivered() -> bool:
        written = await outbox_ids(hub.parts.store)
        return bool(written) and flaky.ids() == written

    await eventually(delivered, timeout=60, what="every event past the 408 and 429")
    flake = (await sink_states(api, token))["flaky"]
    assert flake["dead_lettered"] == 0
    assert flake["retried"] >= 2
    letters = await api.call("GET", "/api/v1/sinks/flaky/dead-letters", token=token)
    assert letters.body["items"] == []


@pytest.mark.timeout(180)
async def test_failed_expired_cancelled_and_late_tasks_reach_a_sink(
    hub: Hub,
    api: ApiClient,
    everything: Receiver,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
) -> None:
    # Slow heartbeats: paused, it must stay online at the hub until its task is assigned
    # (at 0.5 s it went offline 1-2 s into the pause, and offline devices get none).
    device_id, agent = await start_agent(
        hub, enroll_device, lambda paths: agents(paths, heartbeat_interval=5.0)
    )
    token = await api.token("operator")
    task = {"model": VIB, "input": INPUT, "dtype": "int8"}
    nowhere = {"selector": {"site": "nowhere"}}
    reply = await api.call(
        "POST",
        "/api/v1/tasks",
        token=token,
        body={
            "tasks": [
                {**task, "deadline_s": 1, "target": nowhere},
                {**task, "deadline_s": 600, "target": nowhere},
            ]
        },
    )
    assert reply.status == 202, reply.body
    expiring, waiting = reply.body["ids"]
    cancelled = await api.call("POST", f"/api/v1/tasks/{waiting}/cancel", token=token)
    assert cancelled.status == 200, cancelled.body

    # A task held by the device (paused, so it stays assigned) ends with the device's
    # failure, as its results stream would bring it; the same result again is late.
    agent.signal(signal.SIGSTOP)
    try:
        held = await api.call(
            "POST",
            "/api/v1/tasks",
            token=token,
            body={"tasks": [{**task, "target": {"device": device_id}}]},
        )
        assert held.status == 202, held.body
        (failing,) = held.body["ids"]

        async def assigned() -> int:
            found = await hub.parts.store.task(failing)
            return found.attempt if found and found.state == "assigned" else 0

        attempt = await eventually(assigned, timeout=30, what="the task assigned")
        result = {"task_id": failing, "attempt": attempt, "status": "failed", "error": "boom"}

        def from_the_device(db: Sql) -> str:
            with db.write():
                return tasks.apply_result(db, device_id, result, time.time())

        assert await hub.parts.store.run(from_the_device) == "accepted"
        assert await hub.parts.store.run(from_the_device) == "late"
    finally:
        agent.signal(signal.SIGCONT)

    def ended(kind: str, task_id: str) -> bool:
        return any(
            e["type"] == f"org.outpost.task.{kind}" and e["data"]["task_id"] == task_id
            for e in everything.accepted
        )

    async def all_four() -> bool:
        return (
            ended("expired", expiring)
            and ended("cancelled", waiting)
            and ended("failed", failing)
            and ended("late", failing)
        )

    await eventually(all_four, timeout=60, what="failed, expired, cancelled and late")
    failed = next(e for e in everything.accepted if e["type"] == "org.outpost.task.failed")
    assert failed["subject"] == device_id
    assert failed["data"]["detail"] == "boom"
    late = next(e for e in everything.accepted if e["type"] == "org.outpost.task.late")
    assert late["subject"] == device_id
    assert "the task is failed" in late["data"]["detail"]
    ids = everything.ids()
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def scrape(text: str) -> dict[tuple[str, str], float]:
    """(sample name, sink) -> value, for the sinks' series."""
    return {
        (s.name, s.labels["sink"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("outpost_hub_sink_")
    }


async def test_metrics_show_each_sinks_lag_and_counts(
    hub: Hub, api: ApiClient, everything: Receiver, flaky: Receiver
) -> None:
    viewer = await api.token("viewer")
    everything.refuse = {"org.outpost.device.relabelled"}
    await add_device(hub, "dev-metric000001")
    await add_device(hub, "dev-metric000002")
    admin = await api.token("admin", subject="alice")
    relabel = await api.call(
        "PATCH", "/api/v1/devices/dev-metric000001", token=admin, body={"labels": {"a": "b"}}
    )
    assert relabel.status == 200, relabel.body
    written = await outbox_ids(hub.parts.store)

    async def shown() -> dict[tuple[str, str], float] | None:
        reply = await api.call("GET", "/metrics", token=viewer)
        found = scrape(reply.body)
        ready = (
            found.get(("outpost_hub_sink_delivered_total", "hook")) == len(written) - 1
            and found.get(("outpost_hub_sink_dead_lettered_total", "hook")) == 1
            and found.get(("outpost_hub_sink_delivered_total", "flaky")) == len(written)
            and found.get(("outpost_hub_sink_retried_total", "down"), 0) >= 1
        )
        return found if ready else None

    found = await eventually(shown, timeout=60, every=0.5, what="the sinks' figures")
    assert found is not None
    assert found[("outpost_hub_sink_lag_events", "hook")] == 0
    assert found[("outpost_hub_sink_lag_events", "down")] == len(written)
    assert found[("outpost_hub_sink_lag_seconds", "down")] > 0
    assert found[("outpost_hub_sink_delivered_total", "down")] == 0
    assert found[("outpost_hub_sink_retried_total", "flaky")] >= 2
    assert found[("outpost_hub_sink_dead_lettered_total", "flaky")] == 0
    assert found[("outpost_hub_sink_up", "hook")] == 1
    assert found[("outpost_hub_sink_up", "down")] == 0


async def test_a_replica_that_stops_leading_stops_showing_the_sinks(tmp_path: Path) -> None:
    """The sinks' series come from the leader only: a replica that stops leading (its
    lease given up) drops them, so a stale lag cannot keep an alert firing."""
    store = HubStore(tmp_path / "hub.db")
    store.publish_events()
    leadership = Leadership(store, "replica-a", elect=True, lease_s=5.0, renew_s=0.2)
    config = SinkConfig(name="bus", kind="nats", url=f"nats://127.0.0.1:{free_port()}")
    service = SinkService(
        [config], store, source="https://hub.test", keep_s=60.0, bounds=Bounds(10**9, 1e9)
    )
    registry = CollectorRegistry()
    registry.register(service.collector)

    def series() -> dict[tuple[str, str], float]:
        return scrape(generate_latest(registry).decode())

    leading = asyncio.create_task(leadership.run())
    drains = asyncio.create_task(leadership.while_leading(service.run))
    try:

        async def shown() -> bool:
            return ("outpost_hub_sink_lag_events", "bus") in series()

        await eventually(shown, timeout=30, what="the leader showing its sink")
        leading.cancel()  # the replica gives its lease up, as on shutdown
        with contextlib.suppress(asyncio.CancelledError):
            await leading

        async def gone() -> bool:
            return not series()

        await eventually(gone, timeout=30, what="the sink's series gone")
        assert not leadership.leading
    finally:
        for task in (leading, drains):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        store.close()
