"""The hub's side of courier bundles, end to end with no link: what an import does
without an ack to write, and what it leaves alone when the bundle is older than what
the hub heard from the device since."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hub.app import Hub
from hub.courier import exporter
from hub.courier.desk import open_desk
from outpost.courier import sealing
from outpost.courier.sealing import BundleError
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_courier import (
    cli,
    offline_agent,
    produce,
    proxy,  # noqa: F401 - the fixture
)
from tests.integration.test_sink_webhook import INPUT, VIB
from tests.integration.test_store_forward import hub_records
from tests.linkproxy import LinkProxy
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, eventually


def model_folder(name: str) -> Path:
    return next(Path(f) for f in SHIPPED_MODELS if Path(f).parent.name == name)


async def states_of(hub: Hub, task_ids: list[str]) -> list[tuple[str, str | None]]:
    found = [await hub.parts.store.task(i) for i in task_ids]
    return [(t.state, t.device_id) for t in found if t is not None]


async def test_an_import_without_an_ack_leases_nothing(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """`bundle import` with no --ack-out makes no ack: the device's queued tasks stay
    queued (no lease for a bundle nobody carries); `bundle export --tasks N` leases at
    most N of them later, and the rest stay queued."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "1").returncode == 0  # fmt: skip
    assert cli("hub", "bundle", "import", "--data", hub.paths.root,
               tmp_path / "1").returncode == 0  # fmt: skip
    operator = await api.token("operator")
    task = {"model": VIB, "input": INPUT, "dtype": "int8", "target": {"device": device_id}}
    submitted = await api.call("POST", "/api/v1/tasks", token=operator, body={"tasks": [task] * 3})
    assert submitted.status == 202, submitted.body
    ids = submitted.body["ids"]

    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "2").returncode == 0  # fmt: skip
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "2")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "leased" not in imported.stdout
    assert await states_of(hub, ids) == [("queued", None)] * 3

    capped = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
                 "--to", tmp_path / "to-site", "--tasks", "2")  # fmt: skip
    assert capped.returncode == 0, capped.stdout + capped.stderr
    assert "(2 tasks leased)" in capped.stdout
    assert sorted(await states_of(hub, ids)) == [
        ("accepted", device_id),
        ("accepted", device_id),
        ("queued", None),
    ]
    none = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
               "--to", tmp_path / "none", "--tasks", "0")  # fmt: skip
    assert none.returncode == 0, none.stdout + none.stderr
    assert "tasks leased" not in none.stdout
    assert sorted(await states_of(hub, ids))[-1] == ("queued", None)
    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "to-site")
    assert applied.returncode == 0, applied.stderr
    assert "2 tasks leased for 7 days" in applied.stdout
    assert agent.process.poll() is None


async def test_an_old_bundle_after_newer_mqtt_traffic_leaves_the_registry_alone(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A bundle made before the device's link came back, imported after the hub heard
    from it over MQTT: its records are held already, and what it says of the device
    (models, load, store, policy, when it was seen) is out of date: the registry keeps
    what MQTT said."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    try:
        await produce(client, 1, 10)
    finally:
        await client.close()
    old = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "old")
    assert old.returncode == 0, old.stderr
    exported_by = time.time()
    proxy.up()

    async def heard() -> bool:
        device = await hub.parts.store.device(device_id)
        return (
            device is not None
            and (device.last_seen or 0) > exported_by
            and len(hub_records(hub, device_id)) == 10
        )

    await eventually(heard, timeout=60, what="the device heard of over MQTT")
    proxy.down()

    # A heartbeat the broker took just before the cut may still be on its way to the
    # hub, and be stored between `before` and `after` below: its will comes after it
    # (the ingest takes messages in order), so once the device is offline none is left.
    async def offline() -> bool:
        device = await hub.parts.store.device(device_id)
        return device is not None and not device.online

    await eventually(offline, timeout=30, what="the device offline after the cut")
    before = await hub.parts.store.device(device_id)
    late = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "old")
    assert late.returncode == 0, late.stdout + late.stderr
    assert "made before the hub last heard of the device" in late.stdout
    after = await hub.parts.store.device(device_id)
    assert before is not None
    assert after is not None
    changing = {"online", "conn"}  # the link's own state, cut meanwhile
    assert {k: v for k, v in dataclasses.asdict(after).items() if k not in changing} == {
        k: v for k, v in dataclasses.asdict(before).items() if k not in changing
    }
    assert after.bundle_at is None  # never "last seen via bundle"
    assert len(hub_records(hub, device_id)) == 10
    assert agent.process.poll() is None


async def test_export_by_selector_writes_a_bundle_per_matching_device(
    hub: Hub, enroll_device: Enroller, tmp_path: Path
) -> None:
    """`bundle export --selector site=north` writes a bundle for each device of that
    site and for no other; a selector nobody matches is an error."""
    _, north_a = await enroll_device(labels={"site": "north"})
    _, north_b = await enroll_device(labels={"site": "north"})
    _, south = await enroll_device(labels={"site": "south"})
    out = cli("hub", "bundle", "export", "--data", hub.paths.root, "--selector", "site=north",
              "--to", tmp_path / "north")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    names = [p.name for p in (tmp_path / "north").iterdir()]
    for device_id in (north_a.device_id, north_b.device_id):
        assert sum(f"-for-{device_id}-" in n for n in names) == 1, names
    assert len(names) == 2
    assert south.device_id not in out.stdout
    nobody = cli("hub", "bundle", "export", "--data", hub.paths.root, "--selector", "site=east",
                 "--to", tmp_path / "east")  # fmt: skip
    assert nobody.returncode != 0
    assert "no device matches" in nobody.stdout + nobody.stderr


async def test_an_admin_imports_by_api_and_an_ack_is_refused_at_the_hub(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """POST /api/v1/bundles takes an admin's token as a courier's; a hub bundle (one
    addressed to a device) brought back to the hub is refused, storing nothing."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, 5)
    finally:
        await client.close()
    exported = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "out")
    assert exported.returncode == 0, exported.stderr
    (part,) = sorted((tmp_path / "out").glob("*.opb"))
    admin = await api.token("admin")
    reply = await api.call("POST", "/api/v1/bundles", token=admin, raw=part.read_bytes())
    assert reply.status == 200, reply.body
    assert reply.body["stored"]["results"] == 5
    assert reply.body["ack"]
    # What the device went through since the last ack: it started once, with no link.
    assert "1 restart" in reply.body["history"], reply.body
    shown = await api.call("GET", f"/api/v1/devices/{device_id}/events", token=admin)
    (imported,) = [e for e in shown.body["items"] if e["kind"] == "bundle_imported"]
    assert "history " in imported["detail"]
    assert "load samples" in imported["detail"]

    hub_export_to = tmp_path / "for-device"
    out = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
              "--to", hub_export_to)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    back = cli("hub", "bundle", "import", "--data", hub.paths.root, hub_export_to)
    assert back.returncode == 1
    assert f"this bundle is for device {device_id}, not for the hub" in back.stdout, back.stdout
    (ack_part,) = sorted(hub_export_to.glob("*.opb"))
    reply = await api.call("POST", "/api/v1/bundles", token=admin, raw=ack_part.read_bytes())
    assert reply.status == 422
    assert "not for the hub" in reply.error["message"]
    assert len(hub_records(hub, device_id)) == 5
    assert agent.process.poll() is None


async def test_a_bundle_that_cannot_be_made_leaves_its_tasks_queued(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Leased into a bundle never written, tasks sat accepted for the whole lease (7
    days) with nobody to deliver them. A release whose file this hub lacks refuses the
    bundle before any lease; a seal that fails gives the leases back."""
    paths, device_id, _, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "1").returncode == 0  # fmt: skip
    assert cli("hub", "bundle", "import", "--data", hub.paths.root,
               tmp_path / "1").returncode == 0  # fmt: skip
    admin = await api.token("admin")
    model, manifest, sample = bundle_parts(model_folder(VIB), version="1.1.0")
    assert (await upload(hub, admin, model, manifest, sample)).status == 201
    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin,
        body={"model": VIB, "version": "1.1.0", "selector": {}, "canary_share": 1.0},
    )  # fmt: skip
    assert started.status == 201, started.body
    task = {"model": VIB, "input": INPUT, "dtype": "int8", "target": {"device": device_id}}
    submitted = await api.call("POST", "/api/v1/tasks", token=admin, body={"tasks": [task] * 2})
    assert submitted.status == 202, submitted.body
    ids = submitted.body["ids"]
    (model_file,) = (hub.paths.models / VIB / "1.1.0").glob("*.tflite")
    kept = model_file.read_bytes()
    model_file.unlink()  # the release's file gone from this hub's disk

    no_file = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
                  "--to", tmp_path / "to-site")  # fmt: skip

    assert "not exported" in no_file.stdout, no_file.stdout + no_file.stderr
    assert not list((tmp_path / "to-site").glob("*.opb"))
    assert await states_of(hub, ids) == [("queued", None)] * 2

    model_file.write_bytes(kept)
    desk = open_desk(hub.paths, hub.parts.store, hub.config)

    def too_big(*args: object, **kwargs: object) -> bytes:
        raise BundleError("the bundle would hold 1,073,741,825 bytes, over 1,073,741,824")

    monkeypatch.setattr(sealing, "seal", too_big)
    with pytest.raises(BundleError, match="would hold"):
        await desk.exporter.bundle_for(device_id)
    assert [state for state, _ in await states_of(hub, ids)] == ["queued"] * 2
    monkeypatch.undo()
    # One a device would refuse whole (over what its agent imports) is not made either.
    monkeypatch.setattr(exporter, "MAX_HUB_BUNDLE_BYTES", 4096)
    with pytest.raises(BundleError, match="over the 4,096 a device imports"):
        await desk.exporter.bundle_for(device_id)
    assert [state for state, _ in await states_of(hub, ids)] == ["queued"] * 2
    monkeypatch.undo()
    made = await desk.exporter.bundle_for(device_id)  # the control: now it is made
    assert made.tasks == 2
    assert [state for state, _ in await states_of(hub, ids)] == ["accepted"] * 2
