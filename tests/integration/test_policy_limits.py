"""Policy layers the hub could not sign or send: a huge JSON integer in a float field
(stored as the float it declares, so the fleet's refreshes keep working) and layers
whose merged policy is over what a device reads (refused when written; when labels
bring it about later, counted as drift with the reason, not signed at every hello)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.store import Device, HubStore, Layer
from hub.store.policy import undeliverable_with
from outpost import policy
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import eventually

# Each fits on its own; together over the 64 KiB a device reads.
MANY_MODELS = {"allowed_models": [f"m{i:03d}-" + "x" * 190 for i in range(256)]}
MANY_FIELDS = {"masking": {"drop": [f"f{i:02d}-" + "y" * 240 for i in range(64)]}}


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


async def put(api: ApiClient, token: str, name: str, body: dict[str, Any]) -> Any:
    return await api.call("PUT", f"/api/v1/policy/layers/{name}", token=token, body=body)


async def device_policy(api: ApiClient, token: str, device_id: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/api/v1/devices/{device_id}/policy", token=token)
    assert reply.status == 200, reply.body
    found: dict[str, Any] = reply.body
    return found


async def test_a_huge_integer_in_a_float_field_is_kept_as_a_float(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    _, identity = await enroll_device("generic")
    admin = await api.token("admin")
    huge = {"scope": "fleet", "document": {"bounds": {"metrics": {"max_age_s": 10**23}}}}
    reply = await put(api, admin, "fleet", huge)
    assert reply.status == 200, reply.body
    assert reply.body["document"] == {"bounds": {"metrics": {"max_age_s": 1e23}}}
    # The fleet's policies still refresh: a layer written after it reaches the device.
    mine = {"scope": "device", "device": identity.device_id, "document": {"heartbeat_interval": 5}}
    assert (await put(api, admin, "mine", mine)).status == 200

    async def issued() -> dict[str, Any]:
        found = await device_policy(api, admin, identity.device_id)
        return found if found["version"] > 0 else {}

    found = await eventually(issued, timeout=15, what="a policy version for the device")
    assert found["effective"]["bounds"]["metrics"]["max_age_s"] == 1e23
    assert found["effective"]["heartbeat_interval"] == 5
    assert found["undeliverable"] == ""


async def test_a_layer_whose_merged_policy_is_too_large_to_send_is_refused(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    _, identity = await enroll_device("generic")
    device_id = identity.device_id
    admin = await api.token("admin")
    assert (await put(api, admin, "fleet", {"scope": "fleet", "document": MANY_MODELS})).status == (
        200
    )
    mine = {"scope": "device", "device": device_id, "document": MANY_FIELDS}
    reply = await put(api, admin, "mine", mine)
    assert reply.status == 400, reply.body
    assert reply.error["details"]["field"] == "body.document"
    message = reply.error["message"]
    assert f"device {device_id}'s merged policy could not be sent: signed, it is" in message
    assert f"bytes, over the {policy.MAX_SIGNED_BYTES} a device reads" in message
    listed = (await api.call("GET", "/api/v1/policy/layers", token=admin)).body["items"]
    assert [x["name"] for x in listed] == ["fleet"]  # refused before it was stored


async def test_labels_that_make_a_policy_too_large_count_as_drift_with_the_reason(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    _, identity = await enroll_device("generic", {"site": "near"})
    device_id = identity.device_id
    admin = await api.token("admin")
    assert (await put(api, admin, "fleet", {"scope": "fleet", "document": MANY_MODELS})).status == (
        200
    )
    far = {"scope": "group", "selector": {"site": "far"}, "document": MANY_FIELDS}
    assert (await put(api, admin, "far", far)).status == 200  # no device is far yet
    patch = {"labels": {"site": "far"}}
    reply = await api.call("PATCH", f"/api/v1/devices/{device_id}", token=admin, body=patch)
    assert reply.status == 200, reply.body

    async def undeliverable() -> dict[str, Any]:
        found = await device_policy(api, admin, device_id)
        return found if found["layers"] == ["fleet", "far"] and found["undeliverable"] else {}

    found = await eventually(undeliverable, timeout=15, what="the policy marked undeliverable")
    assert found["undeliverable"].startswith("signed, it is")
    assert found["drift"] is True
    metrics = (await api.call("GET", "/metrics", token=admin)).body
    assert "outpost_hub_policy_drift_devices 1.0" in metrics

    # Once the group no longer applies, the device gets a version it can take.
    assert (await api.call("DELETE", "/api/v1/policy/layers/far", token=admin)).status == 200

    async def deliverable() -> dict[str, Any]:
        now = await device_policy(api, admin, device_id)
        return now if now["version"] > found["version"] and not now["undeliverable"] else {}

    await eventually(deliverable, timeout=15, what="a policy the device can take")


async def test_a_stored_layer_that_cannot_be_signed_does_not_stop_the_fleets_refresh(
    tmp_path: Path,
) -> None:
    # Stored before layers were checked for it: msgpack has no integer beyond 64 bits.
    store = HubStore(tmp_path / "hub.db")
    try:
        for device_id in ("dev-a", "dev-b"):
            await store.add_device(
                Device(
                    device_id, "generic", {}, False, None, None, None, None, {}, {},
                    1.0, device_id.encode().hex(), 1.0, 2.0,
                )
            )  # fmt: skip
        bad = {"bounds": {"metrics": {"max_age_s": 10**23}}}
        await store.put_policy_layer(Layer("bad", "device", {}, "dev-a", 0, bad, 1.0, "admin"))
        good = {"heartbeat_interval": 5}
        await store.put_policy_layer(Layer("good", "device", {}, "dev-b", 0, good, 1.0, "admin"))

        sent = await store.refresh_policies(None, now=2.0)
        assert [(x.device_id, bool(x.undeliverable)) for x in sent] == [
            ("dev-a", True),
            ("dev-b", False),
        ]
        found = await store.device_policy("dev-a")
        assert found is not None
        assert found.undeliverable.startswith("cannot be signed")
        assert await store.policy_drift() == 1
        # Not signed again at every hello: nothing new, nothing to send.
        assert await store.refresh_policies(["dev-a"], now=3.0) == []
        again = await store.device_policy("dev-a")
        assert again is not None
        assert again.version == found.version
    finally:
        store.close()


async def test_a_layer_is_measured_on_the_devices_it_applies_to_or_alone(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.db")
    try:
        await store.add_device(
            Device(
                "dev-a", "generic", {"site": "far"}, False, None, None, None, None, {}, {},
                1.0, "aa", 1.0, 2.0,
            )
        )  # fmt: skip
        fleet = Layer("fleet", "fleet", {}, None, 0, MANY_MODELS, 1.0, "admin")
        await store.put_policy_layer(fleet)
        near = Layer("near", "group", {"site": "near"}, None, 0, MANY_FIELDS, 1.0, "admin")
        assert await store.run(undeliverable_with, near) is None  # applies to no device
        far = Layer("far", "group", {"site": "far"}, None, 0, MANY_FIELDS, 1.0, "admin")
        found = await store.run(undeliverable_with, far)
        assert found is not None
        assert found[0] == "dev-a"
        assert found[1].startswith("signed, it is")
        # In place of the layer of its name: a smaller fleet layer makes room.
        smaller = Layer("fleet", "fleet", {}, None, 0, {"heartbeat_interval": 5}, 1.0, "admin")
        assert await store.run(undeliverable_with, smaller) is None
        # Over the limit on its own, it is refused though no device has it.
        alone = {"allowed_models": ["m" * 70_000]}
        nowhere = Layer("nowhere", "group", {"site": "none"}, None, 0, alone, 1.0, "admin")
        found = await store.run(undeliverable_with, nowhere)
        assert found is not None
        assert found[0] == ""
        assert found[1].startswith("signed, it is")
    finally:
        store.close()
