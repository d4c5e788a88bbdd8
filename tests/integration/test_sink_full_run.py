"""A full run through the hub onto both buses at once: a real agent enrolls and comes
online, runs tasks whose results are stored as records, a roll-out starts and is halted,
and the agent goes offline. NATS JetStream and RabbitMQ each hold every event the outbox
holds, exactly once after dedupe by id, in outbox order (so in order per device), with
the right subject on each message."""

from __future__ import annotations

import collections
import json
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from hub.app import Hub
from tests.api_client import ApiClient
from tests.buses import (
    AmqpCollector,
    Received,
    ThrowawayNats,
    ThrowawayRabbit,
    delete_stream,
    once_each,
    read_stream,
)
from tests.conftest import Enroller
from tests.integration.sink_bus_support import outbox_number
from tests.integration.test_sink_faults import stream_exists
from tests.integration.test_sink_webhook import VIB, outbox_ids, start_agent, tasks_succeeded
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, add_device, eventually


@pytest.fixture
def bus_name() -> str:
    return f"fullrun{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def stream(nats_server: ThrowawayNats, bus_name: str) -> AsyncIterator[str]:
    yield bus_name
    await delete_stream(
        nats_server.url, bus_name, user=nats_server.user, password=nats_server.password
    )


@pytest.fixture
async def amqp(rabbitmq_server: ThrowawayRabbit, bus_name: str) -> AsyncIterator[AmqpCollector]:
    """Bound before the hub starts: RabbitMQ drops what no queue takes."""
    async with AmqpCollector(rabbitmq_server.url(), bus_name) as collector:
        yield collector


@pytest.fixture
def hub_settings(
    nats_server: ThrowawayNats,
    rabbitmq_server: ThrowawayRabbit,
    stream: str,
    amqp: AmqpCollector,
    bus_name: str,
) -> str:
    return (
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"
        '[[hub.sinks]]\nname = "jetstream"\nkind = "nats"\n'
        f'url = "{nats_server.url}"\ntarget = "{stream}"\n'
        f'credentials_file = "{nats_server.credentials_file()}"\n'
        '[[hub.sinks]]\nname = "rabbit"\nkind = "rabbitmq"\n'
        f'url = "{rabbitmq_server.address}"\ntarget = "{bus_name}"\n'
        f'credentials_file = "{rabbitmq_server.credentials_file()}"\n'
    )


def check(bus: str, received: list[Received], written: list[int]) -> None:
    """Every event once after dedupe, in outbox order, each on its device's topic."""
    kept = once_each(received)
    assert [outbox_number(m.id) for m in kept] == written, bus
    for message in kept:
        body = json.loads(message.body)
        assert body["id"] == message.id
        assert message.topic.endswith("." + body.get("subject", "_")), (bus, message.topic)


@pytest.mark.timeout(240)
async def test_a_full_run_reaches_nats_and_rabbitmq_once_each_in_order(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    nats_server: ThrowawayNats,
    stream: str,
    amqp: AmqpCollector,
) -> None:
    device_id, agent = await start_agent(hub, enroll_device, agents)
    await tasks_succeeded(hub, api, 5)

    admin = await api.token("admin", subject="alice")
    await add_device(hub, "dev-fullrun00001", labels={"site": "south"})
    model, manifest, sample = bundle_parts(SHIPPED_MODELS[0], version="1.1.0")
    uploaded = await upload(hub, admin, model, manifest, sample)
    assert uploaded.status == 201, uploaded.body
    started = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=admin,
        body={"model": VIB, "version": "1.1.0", "selector": {"site": "south"}},
    )
    assert started.status == 201, started.body
    halted = await api.call(
        "POST", f"/api/v1/rollouts/{started.body['id']}/halt", token=admin, body={"reason": "t"}
    )
    assert halted.status == 200, halted.body

    agent.stop()  # its will: offline

    async def offline() -> bool:
        d = await hub.parts.store.device(device_id)
        return bool(d and not d.online)

    await eventually(offline, timeout=30, what="the device offline")

    async def on_nats() -> list[Received]:
        if not await stream_exists(nats_server, stream):
            return []
        return await read_stream(
            nats_server.url, stream, user=nats_server.user, password=nats_server.password
        )

    async def everywhere() -> bool:
        wanted = set(await outbox_ids(hub.parts.store))
        on_amqp = {outbox_number(m.id) for m in amqp.messages}
        return wanted <= on_amqp and wanted <= {outbox_number(m.id) for m in await on_nats()}

    await eventually(everywhere, timeout=90, every=0.5, what="every event on both buses")
    written = await outbox_ids(hub.parts.store)
    nats_got = await on_nats()
    check("nats", nats_got, written)
    check("rabbitmq", list(amqp.messages), written)

    bodies = [json.loads(m.body) for m in once_each(nats_got)]
    types = [b["type"].removeprefix("org.outpost.") for b in bodies]
    for wanted in (
        "device.enrolled",
        "device.online",
        "task.queued",
        "task.assigned",
        "task.succeeded",
        "record.result",
        "rollout.started",
        "rollout.halted",
        "device.offline",
    ):
        assert wanted in types, (wanted, sorted(set(types)))
    assert types.count("task.succeeded") == 5
    assert types.count("record.result") >= 5
    # Per device, the order it happened in: enrolled and online first, offline last.
    mine = [t for b, t in zip(bodies, types, strict=True) if b.get("subject") == device_id]
    assert mine[:2] == ["device.enrolled", "device.online"]
    assert mine[-1] == "device.offline"
    per_task: dict[str, list[str]] = collections.defaultdict(list)
    for b, t in zip(bodies, types, strict=True):
        if t.startswith("task."):
            per_task[b["data"]["task_id"]].append(t.removeprefix("task."))
    for steps in per_task.values():
        assert steps[0] == "queued"
        assert steps[-1] == "succeeded"
        assert steps.index("assigned") < steps.index("succeeded")
    rollout = [t for t in types if t.startswith("rollout.")]
    assert rollout == ["rollout.started", "rollout.halted"]
