"""Signed policy end to end: layers written through the API, each device's effective
policy signed and delivered retained, applied by the real agent, reported back."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.integration.test_store_forward import hub_records, wait_socket
from tests.support import AgentProcess, device_online, eventually


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


async def device_policy(api: ApiClient, token: str, device_id: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/api/v1/devices/{device_id}/policy", token=token)
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.body
    return body


async def test_layers_reach_the_agent_which_applies_and_reports_them(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device("generic", {"site": "north"})
    device_id = identity.device_id
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    admin = await api.token("admin")
    try:
        for name, layer in (
            (
                "fleet",
                {"scope": "fleet", "document": {"metrics_interval": 30, "log_level": "debug"}},
            ),
            (
                "north",
                {
                    "scope": "group",
                    "selector": {"site": "north"},
                    "document": {
                        "metrics_interval": 20,
                        "masking": {"drop": ["operator"], "hash": ["serial"]},
                    },
                },
            ),
            (
                "pump-1",
                {"scope": "device", "device": device_id, "document": {"heartbeat_interval": 0.4}},
            ),
        ):
            reply = await api.call("PUT", f"/api/v1/policy/layers/{name}", token=admin, body=layer)
            assert reply.status == 200, reply.body

        async def applied() -> dict[str, Any]:
            found = await device_policy(api, admin, device_id)
            ok = found["version"] > 0 and found["applied_version"] == found["version"]
            return found if ok else {}

        found = await eventually(applied, timeout=15, what="the policy applied on the device")
        assert found["layers"] == ["fleet", "north", "pump-1"]
        assert found["effective"]["metrics_interval"] == 20
        assert found["effective"]["heartbeat_interval"] == 0.4
        assert found["drift"] is False
        metrics = await api.call("GET", "/metrics", token=admin)
        assert "outpost_hub_policy_drift_devices 0.0" in metrics.body
        assert (await client.status())["policy_version"] == found["version"]

        # Masking: the dropped field never leaves the device; the hashed one is a hash.
        status, _ = await client.append(
            "results", [{"n": 1, "operator": "alice", "serial": "SN-123", "reading": 0.5}]
        )
        assert status == 201

        async def held() -> list[Any]:
            return [b for _, b in hub_records(hub, device_id) if b.get("n") == 1]

        (record,) = await eventually(held, timeout=15, what="the masked record at the hub")
        assert "operator" not in record
        assert record["serial"].startswith("hmac:")
        assert "SN-123" not in str(record)
        assert record["reading"] == 0.5
        # Nor in the agent's log: its JSON lines mask the policy's fields too (the local
        # API logs the first record of each call at debug level).
        events = [json.loads(line) for line in agent.output().splitlines() if line]
        logged = [e for e in events if e["msg"] == "1 records for results"]
        assert logged, agent.output()[-2000:]
        assert "operator" not in logged[-1]["record"]
        assert logged[-1]["record"]["serial"].startswith("hmac:")
        assert "alice" not in agent.output()
        assert "SN-123" not in agent.output()

        # A change to a layer gives a newer version, applied in turn; the audit has it.
        before = found["version"]
        reply = await api.call(
            "PUT",
            "/api/v1/policy/layers/fleet",
            token=admin,
            body={"scope": "fleet", "document": {"sync": {"rate_bytes_per_s": 50_000}}},
        )
        assert reply.status == 200

        async def newer() -> dict[str, Any]:
            got = await applied()
            return got if got and got["version"] > before else {}

        latest = await eventually(newer, timeout=15, what="the newer policy applied")
        assert latest["effective"]["sync"]["rate_bytes_per_s"] == 50_000
        assert latest["effective"]["metrics_interval"] == 20  # the group still wins
        audit = await api.call("GET", "/api/v1/audit?limit=10", token=admin)
        assert any(e["action"] == "policy.layer.put" for e in audit.body["items"])
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("name", "body", "field", "words"),
    [
        (
            "fleet",
            {"scope": "fleet", "document": {"tasks": {"prefetch": -1}}},
            "body.document",
            "at least 0",
        ),
        ("fleet", {"scope": "fleet", "document": {"nope": 1}}, "body.document", "unknown key"),
        ("group-a", {"scope": "fleet", "document": {}}, "body.scope", "only it"),
        ("group-a", {"scope": "group", "document": {}}, "body.selector", "needs a label selector"),
        (
            "dev",
            {"scope": "device", "device": "dev-nope", "document": {}},
            "body.device",
            "no device",
        ),
        (
            "Bad Name",
            {"scope": "group", "selector": {"a": "b"}, "document": {}},
            "path.name",
            "must match",
        ),
    ],
)
async def test_a_bad_layer_is_refused_naming_the_field(
    hub: Hub, api: ApiClient, name: str, body: dict[str, Any], field: str, words: str
) -> None:
    admin = await api.token("admin")
    reply = await api.call("PUT", f"/api/v1/policy/layers/{name}", token=admin, body=body)
    assert reply.status == 400, reply.body
    assert reply.error["details"]["field"] == field
    assert words in reply.error["message"]
    assert (await api.call("GET", "/api/v1/policy/layers", token=admin)).body["items"] == []
    operator = await api.token("operator")
    good = {"scope": "fleet", "document": {}}
    assert (
        await api.call("PUT", "/api/v1/policy/layers/fleet", token=operator, body=good)
    ).status == 403


async def test_a_policys_task_concurrency_and_prefetch_apply_at_the_next_start(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """Checked, signed and reported applied, then never read: the agent ran (and said it
    ran) its profile's budget after any number of starts."""
    paths, identity = await enroll_device("x86-gateway")  # its profile: 4 tasks at once
    device_id = identity.device_id
    admin = await api.token("admin")
    document = {"tasks": {"concurrency": 1, "prefetch": 0}}
    reply = await api.call(
        "PUT", "/api/v1/policy/layers/one", token=admin,
        body={"scope": "device", "device": device_id, "document": document},
    )  # fmt: skip
    assert reply.status == 200, reply.body
    first = agents(paths)

    async def applied() -> bool:
        found = (await api.call("GET", f"/api/v1/devices/{device_id}/policy", token=admin)).body
        return bool(found["version"] > 0 and found["applied_version"] == found["version"])

    await eventually(applied, timeout=30, what="the policy applied")
    device = await hub.parts.store.device(device_id)
    assert device is not None
    assert device.task_slots == 4  # this start's budget: the policy came after it began
    first.stop()

    async def offline() -> bool:
        found = await hub.parts.store.device(device_id)
        return bool(found and not found.online)

    await eventually(offline, timeout=30, what="the first agent gone")
    second = agents(paths)

    async def back() -> bool:
        found = await hub.parts.store.device(device_id)
        return bool(found and found.online and second.process.poll() is None)

    await eventually(back, timeout=30, what="the agent back")

    def inbox(db: Any) -> int:
        row = db.execute("SELECT task_inbox FROM devices WHERE device_id = ?", (device_id,))
        return int(row.fetchone()[0])

    device = await hub.parts.store.device(device_id)
    assert device is not None
    assert device.task_slots == 1  # the policy's concurrency
    assert await hub.parts.store.run(inbox) == 1  # one run, none ahead


async def test_a_shorter_heartbeat_interval_applies_now(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """The heartbeat loop waited out the interval it began with (120 s here): the hub
    did not even hear the policy was applied until then."""
    paths, identity = await enroll_device("generic")
    device_id = identity.device_id
    admin = await api.token("admin")
    agents(paths, heartbeat_interval=120.0)

    async def online() -> bool:
        return await device_online(hub, device_id)

    await eventually(online, timeout=20, what="the agent online")
    reply = await api.call(
        "PUT",
        "/api/v1/policy/layers/one",
        token=admin,
        body={"scope": "device", "device": device_id, "document": {"heartbeat_interval": 1}},
    )
    assert reply.status == 200, reply.body

    async def applied() -> dict[str, Any]:
        found = (await api.call("GET", f"/api/v1/devices/{device_id}/policy", token=admin)).body
        ok = found["version"] > 0 and found["applied_version"] == found["version"]
        return found if ok else {}

    # Heartbeats every second from now on: the first one says the policy runs.
    await eventually(applied, timeout=15, what="a heartbeat saying the policy is applied")
