"""A retained offer never outlives what the database names (a real hub, its mTLS broker,
on SQLite and PostgreSQL): an agent release that failed on a device for good leaves the
device's `down/agent` at once, and a halt made by another process (a CLI, a tool on the
same database) leaves the canaries' `down/models` at their next hello."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from edge.identity import DevicePaths
from hub.app import Hub
from hub.store import HubStore, agentrollouts
from outpost import tls, wire
from tests import agent_releases
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.integration.test_agent_releases_api import (
    AGENT,
    VERSION,
    _retained_offer,
    parts_of,
    post_release,
)
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, eventually

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_burst = 100000\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One release of this checkout, the outpost wheel alone (no index needed)."""
    out = tmp_path_factory.mktemp("agent-release") / VERSION
    return agent_releases.of_this_checkout(
        tmp_path_factory, out, VERSION, ("x86_64",), dependencies=False
    )


async def _retained_models(
    hub: Hub, paths: DevicePaths, device_id: str
) -> wire.ModelReleases | None:
    """What the device finds retained on its down/models topic when it subscribes (None if
    nothing comes within a few seconds)."""
    async with aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=device_id,
        tls_context=tls.client_context(paths.ca_cert, paths.cert, paths.key),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=30,
    ) as client:
        await client.subscribe(wire.down_topic(device_id, "models"), qos=1)
        try:
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    envelope = wire.decode(
                        message.payload, kinds=wire.DOWN_KINDS, expected_kind="models"
                    )
                    assert isinstance(envelope.body, wire.ModelReleases)
                    return envelope.body
        except TimeoutError:
            return None
    return None


async def test_an_agent_release_that_failed_on_a_device_is_no_longer_offered_to_it(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    enrolled = sorted([await enroll_device() for _ in range(2)], key=lambda e: e[1].device_id)
    (_, canary), (rest_paths, rest) = [(p, i.device_id) for p, i in enrolled]
    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin, body={"agent": VERSION, "canary_share": 0.5}
    )
    assert started.status == 201, started.body
    await hub.parts.rollouts.on_state(canary, wire.ModelState(AGENT, VERSION, "active", "", True))

    async def offered() -> bool:
        offer = await _retained_offer(hub, rest_paths, rest)
        return offer is not None and offer.release is not None

    await eventually(offered, timeout=120, what="the rest device offered the release")

    # In the rest stage, its selfcheck fails: for good, so the hub stops naming it...
    await hub.parts.rollouts.on_state(
        rest, wire.ModelState(AGENT, VERSION, "failed", "not installed: selfcheck failed", True)
    )
    assert await hub.parts.store.run(agentrollouts.desired_agent_of, [rest]) == {}

    # ... and the broker too, with no hello asking: a restarted agent (its refusals are
    # kept in memory) would find the release retained and install it again.
    async def withdrawn() -> bool:
        offer = await _retained_offer(hub, rest_paths, rest)
        return offer is not None and offer.release is None

    await eventually(withdrawn, timeout=120, what="the failed release withdrawn")
    shown = await api.call("GET", f"/api/v1/rollouts/{started.body['id']}", token=admin)
    assert (shown.body["state"], shown.body["reason"]) == ("completed", "1 of 2 devices failed")


async def test_a_halt_made_by_another_process_is_withdrawn_at_the_next_hello(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    model, meta, sample = bundle_parts(SHIPPED_MODELS[0])
    assert (await upload(hub, admin, model, meta, sample)).status == 201
    paths, identity = await enroll_device()
    device_id = identity.device_id
    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin,
        body={"model": meta["name"], "version": meta["version"], "canary_share": 1.0},
    )  # fmt: skip
    assert started.status == 201, started.body

    async def offered() -> bool:
        found = await _retained_models(hub, paths, device_id)
        return found is not None and len(found.releases) == 1

    await eventually(offered, timeout=120, what="the canary offered the release")

    # Another process on the hub's database halts it: the running hub hears nothing.
    other = HubStore(hub.config.database(hub.paths.database))
    try:
        halted = await other.halt_rollout(started.body["id"], "by another", now=time.time())
    finally:
        other.close()
    assert halted is not None
    assert halted.halted_now
    assert await hub.parts.store.desired_releases(device_id) == []

    hub.parts.rollouts.request([device_id])  # what the device's next hello does (app.py)

    async def withdrawn() -> bool:
        found = await _retained_models(hub, paths, device_id)
        return found is not None and not found.releases

    await eventually(withdrawn, timeout=120, what="the halted release withdrawn")
