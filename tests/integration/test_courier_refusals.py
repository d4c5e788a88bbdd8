"""Bad courier bundles, each refused with a reason that says what is wrong, storing
nothing at the hub and deleting nothing on the device; each beside the same bundle, or
the same probe, accepted when it should be. And the API's `POST /api/v1/bundles`, for
the courier role only (and admin)."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edge.identity import DevicePaths
from hub.app import Hub
from hub.courier.keys import load_bundle_key
from hub.fleet import pki
from hub.initialise import initialise
from hub.paths import HubPaths
from outpost.courier import parts, sealing
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_sql
from tests.integration.test_courier import (
    cli,
    held_on_device,
    offline_agent,
    produce,
    proxy,  # noqa: F401 - the fixture
)
from tests.integration.test_store_forward import hub_records
from tests.linkproxy import LinkProxy
from tests.support import AgentProcess

RECORDS = 20


@dataclasses.dataclass
class Site:
    paths: DevicePaths
    device_id: str
    agent: AgentProcess
    bundle: Path  # a folder holding one exported bundle (one part)


async def site(
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> Site:
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, RECORDS)
    finally:
        await client.close()
    folder = tmp_path / f"export-{device_id}"
    exported = cli("agent", "bundle", "export", "--data", paths.root, "--to", folder)
    assert exported.returncode == 0, exported.stderr
    return Site(paths, device_id, agent, folder)


def only_part(folder: Path) -> Path:
    (found,) = sorted(folder.glob("*.opb"))
    return found


def sealed_of(source: Path) -> bytes:
    ((_, sealed),) = parts.assemble([source])
    return sealed


def write_bundle(folder: Path, sealed: bytes) -> Path:
    parts.write_parts(sealed, folder, "crafted", 1 << 30)
    return folder


def reseal(
    hub: Hub,
    sealed: bytes,
    *,
    signer: ec.EllipticCurvePrivateKey,
    cert: bytes,
    **changes: object,
) -> bytes:
    """The device bundle opened with the hub's key, its header changed, signed by
    `signer` with `cert`, and sealed to the hub again: what a forger who holds a key
    could make."""
    opened = sealing.unseal(sealed, load_bundle_key(hub.paths))
    header = msgspec.structs.replace(opened.header, **changes)
    recipient = load_bundle_key(hub.paths).public_key()
    return sealing.seal(header, opened.body, signer=signer, recipient=recipient, cert=cert)


def device_key(paths: DevicePaths) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def self_made_cert(device_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A key and a certificate naming `device_id`, from a CA of the forger's own."""
    ca_key, ca_cert = pki.make_ca("a forger's CA")
    key = pki.new_ec_key()
    issued = pki.issue(ca_key, ca_cert, common_name=device_id, public_key=key.public_key(), days=1)
    return key, issued.pem


def all_records(hub: Hub) -> int:
    ((count,),) = hub_sql(hub.config.database(hub.paths.database), "SELECT COUNT(*) FROM records")
    return int(count)


def refused_at_hub(hub: Hub, source: Path, said: str) -> None:
    before = all_records(hub)
    result = cli("hub", "bundle", "import", "--data", hub.paths.root, source)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert said in output, output
    assert "Traceback" not in output
    assert all_records(hub) == before


async def test_bad_bundles_are_refused_at_the_hub_and_store_nothing(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    one = await site(enroll_device, agents, proxy, tmp_path)
    other = await site(enroll_device, agents, proxy, tmp_path)
    sealed = sealed_of(one.bundle)
    part = only_part(one.bundle).read_bytes()

    # A byte changed in a part: its checksum says so.
    changed = bytearray(part)
    changed[len(part) // 2] ^= 0x01
    (tmp_path / "changed").mkdir()
    (tmp_path / "changed" / "x.001-of-001.opb").write_bytes(bytes(changed))
    refused_at_hub(hub, tmp_path / "changed", "does not match its checksum")
    # Changed, and the part's checksum made to fit: the bundle's own tag says so.
    flipped = bytearray(sealed)
    flipped[-40] ^= 0x01
    refused_at_hub(hub, write_bundle(tmp_path / "refit", bytes(flipped)), "does not decrypt")
    # Cut short, as when the stick is pulled out while writing.
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "x.001-of-001.opb").write_bytes(part[: len(part) - 100])
    refused_at_hub(hub, tmp_path / "cut", "cut short")
    # Another fleet's hub cannot even read it.
    stranger = HubPaths(tmp_path / "other-hub")
    initialise(stranger, server_names=[])
    result = cli("hub", "bundle", "import", "--data", stranger.root, one.bundle)
    assert result.returncode == 1
    assert "does not decrypt for hub" in result.stdout
    # A forger's certificate naming the device.
    forger_key, forger_cert = self_made_cert(one.device_id)
    forged = reseal(hub, sealed, signer=forger_key, cert=forger_cert, id=secrets.token_hex(16))
    refused_at_hub(hub, write_bundle(tmp_path / "forged", forged), "not issued by this fleet's CA")
    # Signed by the other device, as if by this one.
    posing = reseal(
        hub,
        sealed,
        signer=device_key(other.paths),
        cert=other.paths.cert.read_bytes(),
        id=secrets.token_hex(16),
    )
    refused_at_hub(hub, write_bundle(tmp_path / "posing", posing), "another device's certificate")
    # Its own certificate, but another key signed.
    wrong_key = reseal(
        hub, sealed, signer=pki.new_ec_key(), cert=one.paths.cert.read_bytes(), id="ab" * 16
    )
    refused_at_hub(hub, write_bundle(tmp_path / "wrongkey", wrong_key), "does not verify")
    # Too old, or from the future.
    now = time.time()
    for name, at, said in [
        ("stale", now - 400 * 86400, "stale"),
        ("future", now + 86400, "future"),
    ]:
        crafted = reseal(
            hub,
            sealed,
            signer=device_key(one.paths),
            cert=one.paths.cert.read_bytes(),
            id=secrets.token_hex(16),
            created_at=at,
        )
        refused_at_hub(hub, write_bundle(tmp_path / name, crafted), said)

    # The untouched bundle is taken, then refused as a replay.
    taken = cli("hub", "bundle", "import", "--data", hub.paths.root, one.bundle)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert len(hub_records(hub, one.device_id)) == RECORDS
    refused_at_hub(hub, one.bundle, "was imported already")

    # A revoked device's bundle.
    revoked = cli("hub", "device", "revoke", "--data", hub.paths.root, other.device_id)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    refused_at_hub(hub, other.bundle, "was revoked")
    assert hub_records(hub, other.device_id) == []


async def test_bad_hub_bundles_are_refused_on_the_device_and_delete_nothing(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    one = await site(enroll_device, agents, proxy, tmp_path)
    other = await site(enroll_device, agents, proxy, tmp_path)
    acks = tmp_path / "acks"
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, one.bundle, other.bundle,
                   "--ack-out", acks)  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr
    ack_of = {d: sorted(acks.glob(f"*-for-{d}-*.opb")) for d in (one.device_id, other.device_id)}

    def refused_on_device(source: Path, said: str) -> None:
        result = cli("agent", "bundle", "import", "--data", one.paths.root, source)
        assert result.returncode == 2, result.stdout
        assert said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert held_on_device(one.paths) == RECORDS  # nothing deleted

    # The other device's ack.
    refused_on_device(ack_of[other.device_id][0], f"is for {other.device_id}, not for this")
    # Its own export: meant for the hub.
    refused_on_device(one.bundle, "import it at the hub")
    # An ack signed by a key that is not the hub's, sealed to this device.
    cert = x509.load_pem_x509_certificate(one.paths.cert.read_bytes())
    device_public = cert.public_key()
    assert isinstance(device_public, ec.EllipticCurvePublicKey)
    genuine = sealing.unseal(sealed_of(ack_of[one.device_id][0]), device_key(one.paths))
    forged = sealing.seal(
        msgspec.structs.replace(genuine.header, id=secrets.token_hex(16)),
        genuine.body,
        signer=ed25519.Ed25519PrivateKey.generate(),
        recipient=device_public,
    )
    refused_on_device(write_bundle(tmp_path / "forged-ack", forged), "signature does not verify")
    # Cut short.
    part = ack_of[one.device_id][0].read_bytes()
    (tmp_path / "cut-ack").mkdir()
    (tmp_path / "cut-ack" / "x.001-of-001.opb").write_bytes(part[:-10])
    refused_on_device(tmp_path / "cut-ack", "cut short")

    # The genuine ack is applied; again, it is refused as a replay.
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(ack_of[one.device_id][0], mine)
    applied = cli("agent", "bundle", "import", "--data", one.paths.root, mine)
    assert applied.returncode == 0, applied.stderr
    assert held_on_device(one.paths) == 0
    again = cli("agent", "bundle", "import", "--data", one.paths.root, mine)
    assert "imported here already" in again.stderr


async def test_the_api_imports_a_bundle_for_a_courier_and_answers_with_the_ack(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    one = await site(enroll_device, agents, proxy, tmp_path)
    upload = only_part(one.bundle).read_bytes()
    courier, viewer = await api.token("courier"), await api.token("viewer")
    # Bytes go as application/octet-stream (aiohttp's default for bytes).
    reply = await api.call("POST", "/api/v1/bundles", token=viewer, raw=upload)
    assert reply.status == 403
    reply = await api.call("GET", "/api/v1/devices", token=courier)
    assert reply.status == 403  # a courier carries bundles, and sees nothing
    reply = await api.call(
        "POST", "/api/v1/bundles", token=courier, raw=upload, content_type="application/json"
    )
    assert reply.status == 415
    reply = await api.call("POST", "/api/v1/bundles", token=courier, raw=upload[:-5])
    assert reply.status == 422
    assert "cut short" in reply.error["message"]
    assert hub_records(hub, one.device_id) == []

    reply = await api.call("POST", "/api/v1/bundles", token=courier, raw=upload)
    assert reply.status == 200, reply.body
    assert reply.body["device_id"] == one.device_id
    assert reply.body["stored"]["results"] == RECORDS
    assert len(hub_records(hub, one.device_id)) == RECORDS
    back = tmp_path / "back"
    back.mkdir()
    (back / reply.body["ack_name"]).write_bytes(base64.b64decode(reply.body["ack"]))
    applied = cli("agent", "bundle", "import", "--data", one.paths.root, back)
    assert applied.returncode == 0, applied.stderr
    assert held_on_device(one.paths) == 0

    reply = await api.call("POST", "/api/v1/bundles", token=courier, raw=upload)
    assert reply.status == 422
    assert "imported already" in reply.error["message"]
