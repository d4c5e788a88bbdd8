"""Staged roll-outs end to end: a real hub, its mTLS broker and real agent processes.
Canaries first and the rest only after every canary runs the model; a canary that
refuses the model (its bytes differ from the signed manifest) halts the roll-out while
every device keeps serving the version it had."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from hub.fleet.enrollment import load_signing_key
from hub.models.rollouts import sealed_offer
from outpost import tls, wire
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, eventually

VIBRATION = SHIPPED_MODELS[0]


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_burst = 100000\n"


async def _fleet(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess], count: int
) -> list[str]:
    """Enroll `count` devices at one site with vibration-anomaly 1.0.0, and run them."""
    ids = []
    for _ in range(count):
        paths, identity = await enroll_device("generic", {"site": "mill"})
        ModelDirectory(paths.models).install(VIBRATION)
        agents(paths)
        ids.append(identity.device_id)

    async def all_ready() -> bool:
        found = [await hub.parts.store.device(i) for i in ids]
        return all(d and d.online and _serving(d.models) == "1.0.0" for d in found)

    await eventually(all_ready, timeout=30, what="agents online with 1.0.0")
    return ids


def _serving(models: list[dict[str, Any]]) -> str | None:
    return next(
        (
            m["version"]
            for m in models
            if m["name"] == "vibration-anomaly" and m["state"] == "ready"
        ),
        None,
    )


async def _start(
    api: ApiClient, token: str, share: float, version: str = "1.1.0"
) -> dict[str, Any]:
    reply = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=token,
        body={
            "model": "vibration-anomaly",
            "version": version,
            "selector": {"site": "mill"},
            "canary_share": share,
        },
    )
    assert reply.status == 201, reply.body
    rollout: dict[str, Any] = reply.body
    return rollout


async def test_a_staged_rollout_reaches_the_rest_after_the_canary(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    ids = await _fleet(hub, enroll_device, agents, 3)
    admin = await api.token("admin")
    model, manifest, sample = bundle_parts(VIBRATION, version="1.1.0")
    assert (await upload(hub, admin, model, manifest, sample)).status == 201

    started = await _start(api, admin, 0.3)
    stages = {d["device"]: d["stage"] for d in started["devices"]}
    assert sorted(stages.values()) == ["canary", "rest", "rest"]
    assert {d["state"] for d in started["devices"] if d["stage"] == "rest"} == {"waiting"}

    async def completed() -> dict[str, Any]:
        reply = await api.call("GET", f"/api/v1/rollouts/{started['id']}", token=admin)
        return reply.body if reply.body["state"] == "completed" else {}

    done = await eventually(completed, timeout=60, what="the roll-out to complete")
    assert done["reason"] == ""
    assert done["counts"] == {"active": 3}
    canary = next(d for d in done["devices"] if d["stage"] == "canary")
    for rest in (d for d in done["devices"] if d["stage"] == "rest"):
        # Released only once the canary reported the model active.
        assert rest["released_at"] >= canary["updated_at"]

    async def all_serve_new() -> bool:
        found = [await hub.parts.store.device(i) for i in ids]
        return all(d and _serving(d.models) == "1.1.0" for d in found)

    await eventually(all_serve_new, timeout=30, what="every device serving 1.1.0")


async def test_a_canary_that_refuses_the_model_halts_the_rollout(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
) -> None:
    ids = await _fleet(hub, enroll_device, agents, 2)
    admin = await api.token("admin")
    model, manifest, sample = bundle_parts(VIBRATION, version="1.1.0")
    assert (await upload(hub, admin, model, manifest, sample)).status == 201
    # The hub's copy is damaged after it was checked and signed: what devices download
    # no longer matches the signed manifest.
    stored = hub.paths.models / "vibration-anomaly" / "1.1.0" / "model.tflite"
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    started = await _start(api, admin, 0.5)

    async def halted() -> dict[str, Any]:
        reply = await api.call("GET", f"/api/v1/rollouts/{started['id']}", token=admin)
        return reply.body if reply.body["state"] == "halted" else {}

    done = await eventually(halted, timeout=60, what="the roll-out to halt")
    canary = next(d for d in done["devices"] if d["stage"] == "canary")
    rest = next(d for d in done["devices"] if d["stage"] == "rest")
    assert canary["state"] == "failed"
    assert "sha256" in canary["detail"]
    assert done["reason"].startswith(f"canary {canary['device']} failed: ")
    assert (rest["state"], rest["released_at"]) == ("waiting", None)

    for device_id in ids:  # both still serve what they had
        device = await hub.parts.store.device(device_id)
        assert device is not None
        assert _serving(device.models) == "1.0.0"
    canary_paths = next(
        DevicePaths(p.parent.parent)
        for p in hub.paths.root.parent.glob("device-*/identity/identity.json")
        if canary["device"] in p.read_text()
    )
    assert not list((canary_paths.models / ".downloads").glob("*"))  # partial removed


async def test_an_older_offer_sent_again_does_not_take_a_device_back(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """Whoever can publish on a device's `down/models` (a broker the fleet does not
    trust) replays the offer of 1.1.0 after the device moved on to 1.2.0: the agent
    ignores it, by the offer's seal, and keeps serving 1.2.0."""
    paths, identity = await enroll_device("generic", {"site": "mill"})
    ModelDirectory(paths.models).install(VIBRATION)
    agent = agents(paths)
    device_id = identity.device_id
    admin = await api.token("admin")

    async def serving(version: str) -> bool:
        device = await hub.parts.store.device(device_id)
        return device is not None and device.online and _serving(device.models) == version

    await eventually(lambda: serving("1.0.0"), timeout=30, what="the agent online with 1.0.0")
    replayed = b""
    for version in ("1.1.0", "1.2.0"):
        model, manifest, sample = bundle_parts(VIBRATION, version=version)
        assert (await upload(hub, admin, model, manifest, sample)).status == 201
        await _start(api, admin, 1.0, version=version)
        await eventually(
            functools.partial(serving, version), timeout=60, what=f"the device serving {version}"
        )
        if not replayed:
            replayed = await _offer_now(hub, device_id)  # an offer of 1.1.0

    assert wire.decode(replayed, kinds=wire.DOWN_KINDS).body.seal is not None
    async with _hub_client(hub) as broker:  # as a broker could, the offer kept retained
        await broker.publish(wire.down_topic(device_id, "models"), replayed, qos=1, retain=True)

    def since_1_2_0() -> str:
        return agent.log.read_text(errors="replace").split(
            "model vibration-anomaly 1.2.0 active (release deployed)"
        )[-1]

    async def settled() -> bool:  # the agent ignored the offer, or went back to 1.1.0
        after = since_1_2_0()
        return "taken already" in after or "vibration-anomaly 1.1.0 active" in after

    await eventually(settled, timeout=30, what="the agent to handle the replayed offer")
    assert "model releases ignored: offer" in since_1_2_0()
    assert "vibration-anomaly 1.1.0 active" not in since_1_2_0()
    assert await serving("1.2.0")


def _hub_client(hub: Hub) -> aiomqtt.Client:
    p = hub.paths
    return aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier="outpost-hub-test",
        tls_context=tls.client_context(p.ca_cert, p.client_cert, p.client_key),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=30,
    )


async def _offer_now(hub: Hub, device_id: str) -> bytes:
    """The offer the hub makes the device now, sealed with the hub's key and numbered as
    it would send it: what the broker keeps retained on the device's `down/models`."""
    key = load_signing_key(hub.paths)
    offer = (await hub.parts.store.offers_of([device_id], now=time.time()))[device_id]
    return wire.encode("models", sealed_offer(key, offer, time.time()))
