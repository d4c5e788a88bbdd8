"""Staged roll-outs end to end: a real hub, its mTLS broker and real agent processes.
Canaries first and the rest only after every canary runs the model; a canary that
refuses the model (its bytes differ from the signed manifest) halts the roll-out while
every device keeps serving the version it had."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
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


async def _start(api: ApiClient, token: str, share: float) -> dict[str, Any]:
    reply = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=token,
        body={
            "model": "vibration-anomaly",
            "version": "1.1.0",
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
