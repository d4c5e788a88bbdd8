"""The device's side of courier bundles, end to end with no link: hub bundles carried
out of order, model files only where lacking, and policies, each applied with the
checks the MQTT path uses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.identity import DevicePaths
from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_courier import (
    cli,
    offline_agent,
    proxy,  # noqa: F401 - the fixture
)
from tests.integration.test_sink_webhook import VIB
from tests.linkproxy import LinkProxy
from tests.local_api import LocalClient
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, eventually


async def roll_out(hub: Hub, api: ApiClient, admin: str, version: str) -> int:
    folder = next(Path(f) for f in SHIPPED_MODELS if f"/{VIB}/" in f"{f}/")
    model, manifest, sample = bundle_parts(folder, version=version)
    assert (await upload(hub, admin, model, manifest, sample)).status == 201
    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin,
        body={"model": VIB, "version": version, "selector": {}, "canary_share": 1.0},
    )  # fmt: skip
    assert started.status == 201, started.body
    return int(started.body["id"])


def hub_export(hub: Hub, device_id: str, to: Path) -> None:
    out = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
              "--to", to)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def round_trip_to_hub(hub: Hub, paths: DevicePaths, folder: Path) -> None:
    """The device's bundle, imported at the hub (no ack)."""
    exported = cli("agent", "bundle", "export", "--data", paths.root, "--to", folder)
    assert exported.returncode == 0, exported.stderr
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, folder)
    assert imported.returncode == 0, imported.stdout + imported.stderr


async def serving(paths: DevicePaths) -> dict[str, str]:
    local = LocalClient(paths.socket)
    try:
        models: list[dict[str, Any]] = (await local.models())["models"]
    finally:
        await local.close()
    return {m["name"]: m["version"] for m in models}


async def test_an_older_hub_bundle_after_a_newer_one_rolls_nothing_back(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Two hub bundles carried in the wrong order: the newer one's release (1.2.0) is
    deployed; the older one (1.1.0) is applied for its marks and leases but offers no
    release. The device's next bundle tells the hub it runs 1.2.0, and the hub's next
    bundle carries the release without the model file the device holds."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    round_trip_to_hub(hub, paths, tmp_path / "hello")
    admin = await api.token("admin")
    await roll_out(hub, api, admin, "1.1.0")
    hub_export(hub, device_id, tmp_path / "older")
    await roll_out(hub, api, admin, "1.2.0")  # supersedes 1.1.0
    hub_export(hub, device_id, tmp_path / "newer")

    newer = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "newer")
    assert newer.returncode == 0, newer.stderr
    assert f"model {VIB} 1.2.0 carried" in newer.stdout

    async def on_1_2() -> bool:
        return (await serving(paths)).get(VIB) == "1.2.0"

    await eventually(on_1_2, timeout=60, what="1.2.0 active on the device")
    older = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "older")
    assert older.returncode == 0, older.stderr
    assert "made before a hub bundle applied here already" in older.stdout, older.stdout
    assert "1.1.0" not in older.stdout  # its model file is not even staged
    assert (await serving(paths))[VIB] == "1.2.0"

    round_trip_to_hub(hub, paths, tmp_path / "running")  # the hub learns it runs 1.2.0
    hub_export(hub, device_id, tmp_path / "again")
    again = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert "carried" not in again.stdout  # the release again, with no model file
    assert (await serving(paths))[VIB] == "1.2.0"
    assert agent.process.poll() is None
