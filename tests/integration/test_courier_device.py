"""The device's side of courier bundles, end to end with no link: hub bundles carried
out of order, model files only where lacking, and policies, each applied with the
checks the MQTT path uses."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.deployfetch import DOWNLOADS
from edge.identity import DevicePaths
from hub.app import Hub
from hub.fleet.enrollment import load_signing_key
from hub.initialise import initialise
from hub.paths import HubPaths
from outpost import tls, wire
from outpost.courier import content, parts, sealing
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_courier import (
    cli,
    held_on_device,
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


async def policy_version(paths: DevicePaths) -> int | None:
    local = LocalClient(paths.socket)
    try:
        version = (await local.status())["policy_version"]
    finally:
        await local.close()
    return None if version is None else int(version)


async def test_a_policy_travels_by_bundle_and_an_older_one_is_refused(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A policy changed at the hub reaches a device with no link in its bundle, through
    the same verification as from MQTT; the policy of a bundle made before it, carried
    in after, is older and refused (the device keeps the newer)."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    await client.close()
    hub_export(hub, device_id, tmp_path / "before")
    admin = await api.token("admin")
    reply = await api.call(
        "PUT", "/api/v1/policy/layers/fleet", token=admin,
        body={"scope": "fleet", "document": {"sync": {"rate_bytes_per_s": 50_000}}},
    )  # fmt: skip
    assert reply.status == 200, reply.body
    hub_export(hub, device_id, tmp_path / "after")

    newer = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "after")
    assert newer.returncode == 0, newer.stderr
    applied = await policy_version(paths)
    assert applied is not None
    assert f"policy version {applied} applied" in newer.stdout, newer.stdout
    older = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "before")
    assert older.returncode == 0, older.stderr
    assert f"policy version {applied} kept" in older.stdout, older.stdout
    assert await policy_version(paths) == applied
    assert agent.process.poll() is None


async def test_a_model_file_with_the_wrong_sha256_is_refused_from_a_bundle(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A hub bundle whose model file is not the one its signed release names (a byte
    changed, the bundle signed again by the hub's key: only the manifest vouches for the
    file): the device refuses the file as it refuses such a download (never staged for
    the deployer), says so, and the model in service stays."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    round_trip_to_hub(hub, paths, tmp_path / "hello")
    admin = await api.token("admin")
    await roll_out(hub, api, admin, "1.1.0")
    hub_export(hub, device_id, tmp_path / "genuine")
    device = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert isinstance(device, ec.EllipticCurvePrivateKey)
    ((_, sealed),) = parts.assemble([tmp_path / "genuine"])
    opened = sealing.unseal(sealed, device)
    carried = content.decode_hub(opened.body)
    (model_file,) = carried.model_files
    changed = bytearray(model_file.data)
    changed[len(changed) // 2] ^= 0x01
    crafted = msgspec.structs.replace(
        carried, model_files=[msgspec.structs.replace(model_file, data=bytes(changed))]
    )
    resealed = sealing.seal(
        msgspec.structs.replace(opened.header, id=secrets.token_hex(16)),
        content.encode(crafted),
        signer=load_signing_key(hub.paths),
        recipient=device.public_key(),
    )
    parts.write_parts(resealed, tmp_path / "crafted", "crafted", 1 << 30)

    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "crafted")
    assert applied.returncode == 0, applied.stderr
    assert f"refused: model {VIB} 1.1.0: its file does not match the signed release" in (
        applied.stdout
    ), applied.stdout
    assert "carried" not in applied.stdout
    staged = list((paths.models / DOWNLOADS).glob(f"{VIB}@1.1.0*"))
    assert staged == []  # never kept where a download would be
    assert (await serving(paths))[VIB] == "1.0.0"
    assert agent.process.poll() is None


async def test_another_fleets_hub_bundle_is_refused_on_the_device(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A hub of another fleet that knows the device's public key (it is no secret) can
    seal a bundle the device can open; the device refuses it, applying nothing."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    try:
        status, _ = await client.append("results", [{"n": 1}])
        assert status == 201
    finally:
        await client.close()
    stranger = HubPaths(tmp_path / "other-hub")
    initialise(stranger, server_names=[])
    device = x509.load_pem_x509_certificate(paths.cert.read_bytes()).public_key()
    assert isinstance(device, ec.EllipticCurvePublicKey)
    header = sealing.Header(
        v=sealing.VERSION,
        kind=content.KIND_HUB,
        fleet=tls.fingerprint(stranger.ca_cert.read_bytes()),
        sender=content.HUB,
        to=device_id,
        id=secrets.token_hex(16),
        created_at=time.time(),
    )
    forged = sealing.seal(
        header,
        content.encode(content.HubContent(acks=[wire.Ack("results", 1)])),
        signer=load_signing_key(stranger),
        recipient=device,
    )
    parts.write_parts(forged, tmp_path / "stranger", "stranger", 1 << 30)
    refused = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "stranger")
    assert refused.returncode == 2, refused.stdout
    assert "from another fleet's hub" in refused.stderr, refused.stderr
    assert held_on_device(paths) == 1  # nothing deleted
    assert agent.process.poll() is None
