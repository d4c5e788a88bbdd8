"""Agent releases over the API (issue 22): an admin uploads a built release (checked
against its manifest, signed, never replaced; a refused upload leaves nothing behind),
viewers list them, a device downloads its files with its certificate (resumable, and
nothing outside the releases' folder), and `POST /api/v1/rollouts {agent}` stages one
like a model (canaries, halt) beside the model roll-outs, offered retained on
`down/agent`; the CLI refuses a contradictory `rollouts start` in one line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import yarl
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.identity import DevicePaths
from hub.app import Hub
from hub.store import agentrollouts
from outpost import agentrelease, tls, wire
from outpost.agentrelease import AgentManifest
from outpost.signing import Signed
from tests import agent_releases
from tests.api_client import ApiClient, Reply
from tests.conftest import Enroller
from tests.model_upload import bundle_parts
from tests.model_upload import upload as upload_model
from tests.support import REPO, SHIPPED_MODELS, eventually

VERSION = "0.7.0"
AGENT = agentrelease.ROLLOUT_NAME
# (part name, content, file name): one part of an upload, as a client sends it.
Part = tuple[str, bytes, str]


@pytest.fixture
def hub_settings() -> str:
    # Tests here make many calls under one token in a moment: the rate limit is not
    # what they look at.
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One release of this checkout, the outpost wheel alone (no index needed)."""
    out = tmp_path_factory.mktemp("agent-release") / VERSION
    return agent_releases.of_this_checkout(
        tmp_path_factory, out, VERSION, ("x86_64",), dependencies=False
    )


def parts_of(folder: Path) -> list[Part]:
    """A release folder's upload: its manifest, then each file under files/."""
    manifest: Part = ("manifest", (folder / agentrelease.MANIFEST).read_bytes(), "manifest.json")
    files = sorted((folder / agentrelease.FILES).iterdir())
    return [manifest, *(("file", p.read_bytes(), p.name) for p in files)]


def wheel_of(folder: Path) -> tuple[agentrelease.AgentFile, bytes]:
    (entry,) = agentrelease.read_folder(folder).files
    return entry, (folder / agentrelease.FILES / entry.name).read_bytes()


def multipart(parts: list[Part]) -> tuple[bytes, str]:
    """A multipart/form-data body of exactly these parts, file names as written (a client
    library would escape a slash in one), and its content type."""
    boundary = f"outpost-test-{secrets.token_hex(12)}"
    body = bytearray()
    for name, content, filename in parts:
        body += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


async def post_release(api: ApiClient, token: str | None, parts: list[Part]) -> Reply:
    """POST /api/v1/agent-releases with exactly these multipart parts."""
    body, content_type = multipart(parts)
    return await api.call(
        "POST", "/api/v1/agent-releases", token=token, raw=body, content_type=content_type
    )


def left_behind(hub: Hub) -> list[str]:
    """What is under the hub's agent releases folder (folders, staging, files)."""
    root = hub.paths.agent_releases
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


async def listed_versions(api: ApiClient, token: str) -> list[str]:
    reply = await api.call("GET", "/api/v1/agent-releases", token=token)
    assert reply.status == 200, reply.body
    return [item["version"] for item in reply.body["items"]]


def signing_key(hub: Hub) -> ed25519.Ed25519PublicKey:
    public = serialization.load_pem_public_key(hub.paths.signing_pub.read_bytes())
    assert isinstance(public, ed25519.Ed25519PublicKey)
    return public


async def desired_agent(hub: Hub, device_ids: list[str]) -> dict[str, AgentManifest]:
    """The agent release each device should run, as the hub's store says, each checked
    against the hub's signing key."""
    desired = await hub.parts.store.run(agentrollouts.desired_agent_of, device_ids)
    public = signing_key(hub)
    return {d: agentrelease.verify(public, Signed(*signed))[0] for d, signed in desired.items()}


def device_context(paths: DevicePaths) -> ssl.SSLContext:
    return tls.client_context(paths.ca_cert, paths.cert, paths.key)


# -- uploads -------------------------------------------------------------------------


async def test_an_admin_uploads_a_release_once_and_viewers_list_it(
    hub: Hub, api: ApiClient, built: Path
) -> None:
    admin, viewer = await api.token("admin"), await api.token("viewer")
    parts = parts_of(built)
    entry, _ = wheel_of(built)

    as_viewer = await post_release(api, viewer, parts)
    anonymous = await post_release(api, None, parts)
    assert as_viewer.status == 403, as_viewer.body
    assert anonymous.status == 401, anonymous.body
    assert await listed_versions(api, viewer) == []
    assert left_behind(hub) == []

    taken = await post_release(api, admin, parts)  # the same upload, by an admin
    assert taken.status == 201, taken.body
    body = taken.body
    assert (body["version"], body["platforms"], body["files"]) == (VERSION, ["x86_64"], 1)
    assert body["size"] == entry.size
    assert body["uploaded_by"] == "tester"
    assert (hub.paths.agent_releases / VERSION / entry.name).read_bytes() == (
        built / agentrelease.FILES / entry.name
    ).read_bytes()

    listed = await api.call("GET", "/api/v1/agent-releases", token=viewer)
    assert listed.status == 200, listed.body
    assert listed.body == {"items": [body]}

    again = await post_release(api, admin, parts)
    assert again.status == 409, again.body
    assert again.error["code"] == "conflict"
    assert f"agent release {VERSION} exists already" in again.error["message"]
    assert await listed_versions(api, viewer) == [VERSION]
    assert left_behind(hub) == [VERSION, f"{VERSION}/{entry.name}"]  # no staging left


async def test_concurrent_uploads_of_one_version_take_it_once_whole(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    entry, wheel = wheel_of(built)

    replies = await asyncio.gather(*(post_release(api, admin, parts_of(built)) for _ in range(6)))

    statuses = sorted(r.status for r in replies)
    assert await listed_versions(api, admin) == [VERSION]
    paths, _ = await enroll_device()
    url = f"{hub.config.hub_url}/api/v1/device/agent-releases/{VERSION}/{entry.name}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=device_context(paths)) as got,
    ):
        assert (got.status, statuses) == (200, [201, 409, 409, 409, 409, 409])
        assert await got.read() == wheel


def _spoilt(built: Path, spoil: str) -> list[Part]:
    manifest, *files = parts_of(built)
    (wheel,) = files
    if spoil == "missing":
        return [manifest]
    if spoil == "tampered":
        data = bytearray(wheel[1])
        data[100] ^= 0xFF
        return [manifest, ("file", bytes(data), wheel[2])]
    if spoil == "extra":
        return [manifest, wheel, ("file", b"not a wheel at all", "stray-1.0-py3-none-any.whl")]
    if spoil == "bad-manifest":
        return [("manifest", b'{"version": "0.7.0"', "manifest.json"), wheel]
    if spoil == "unknown-part":
        return [manifest, wheel, ("sample", b"{}", "sample.json")]
    if spoil == "no-manifest":
        return [wheel]
    if spoil == "twice":
        return [manifest, manifest, wheel]
    if spoil == "not-a-wheel":
        return [manifest, wheel, ("file", b"x", "outpost-0.7.0.tar.gz")]
    if spoil == "path-in-name":
        return [manifest, ("file", wheel[1], "../../../outpost-0.7.0-py3-none-any.whl")]
    if spoil == "absolute-name":
        return [manifest, ("file", wheel[1], "/srv/outpost-0.7.0-py3-none-any.whl")]
    raise AssertionError(spoil)


@pytest.mark.parametrize(
    ("spoil", "status", "field", "said"),
    [
        ("missing", 422, None, "outpost-0.7.0-py3-none-any.whl: cannot read"),
        ("tampered", 422, None, "outpost-0.7.0-py3-none-any.whl: does not match the manifest"),
        ("extra", 422, None, "files the manifest does not name: ['stray-1.0-py3-none-any.whl']"),
        ("bad-manifest", 422, None, "manifest.json"),
        ("unknown-part", 400, "body.sample", "unknown part"),
        ("no-manifest", 400, "body.manifest", "missing part"),
        ("twice", 400, "body.manifest", "sent twice"),
        ("not-a-wheel", 400, "body.file", "'outpost-0.7.0.tar.gz' is not a wheel's file name"),
        ("path-in-name", 400, "body.file", "'../../../outpost-0.7.0-py3-none-any.whl' is not"),
        ("absolute-name", 400, "body.file", "srv/outpost-0.7.0-py3-none-any.whl' is not"),
    ],
)
async def test_a_refused_upload_keeps_nothing_and_the_unspoilt_one_is_taken(
    hub: Hub,
    api: ApiClient,
    built: Path,
    spoil: str,
    status: int,
    field: str | None,
    said: str,
) -> None:
    admin, viewer = await api.token("admin"), await api.token("viewer")

    refused = await post_release(api, admin, _spoilt(built, spoil))

    assert refused.status == status, refused.body
    assert refused.error["code"] == ("release_refused" if status == 422 else "bad_field")
    assert said in refused.error["message"], refused.error
    if field is not None:
        assert refused.error["details"]["field"] == field
    assert await listed_versions(api, viewer) == []
    assert left_behind(hub) == []
    assert sorted(p.name for p in hub.paths.root.glob("*.whl")) == []  # nothing climbed out
    taken = await post_release(api, admin, parts_of(built))  # the same, unspoilt
    assert taken.status == 201, taken.body
    assert await listed_versions(api, viewer) == [VERSION]


async def test_an_upload_that_is_not_multipart_is_refused(
    hub: Hub, api: ApiClient, built: Path
) -> None:
    admin = await api.token("admin")
    manifest = json.loads((built / agentrelease.MANIFEST).read_text())
    refused = await api.call("POST", "/api/v1/agent-releases", token=admin, body=manifest)
    assert refused.status == 400, refused.body
    assert refused.error["details"]["field"] == "body"
    assert left_behind(hub) == []
    assert (await post_release(api, admin, parts_of(built))).status == 201


# -- downloads by devices ------------------------------------------------------------


async def test_a_device_downloads_a_release_file_whole_or_resumed_with_its_certificate(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin, viewer = await api.token("admin"), await api.token("viewer")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    entry, wheel = wheel_of(built)
    paths, identity = await enroll_device()
    url = f"{hub.config.hub_url}/api/v1/device/agent-releases/{VERSION}/{entry.name}"
    device = device_context(paths)
    anonymous = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    half = len(wheel) // 2

    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=device) as whole:
            assert whole.status == 200
            body = await whole.read()
        assert hashlib.sha256(body).hexdigest() == entry.sha256
        assert len(body) == entry.size
        async with session.get(url, ssl=device, headers={"Range": f"bytes={half}-"}) as rest:
            assert rest.status == 206
            assert rest.headers["Content-Range"] == f"bytes {half}-{len(wheel) - 1}/{len(wheel)}"
            resumed = wheel[:half] + await rest.read()
        assert hashlib.sha256(resumed).hexdigest() == entry.sha256

        async with session.get(url, ssl=anonymous) as no_certificate:
            assert no_certificate.status == 401
            assert "device certificate" in (await no_certificate.json())["error"]["message"]
        bearer = {"Authorization": f"Bearer {viewer}"}
        async with session.get(url, ssl=anonymous, headers=bearer) as as_viewer:
            assert as_viewer.status == 401
        async with session.get(url, ssl=device) as again:  # the same request, as the device
            assert again.status == 200
            assert await again.read() == wheel

        for missing in (
            url.replace(f"/{VERSION}/", "/9.9.9/"),
            url.replace(entry.name, "numpy-2.0.0-cp311-cp311-linux_x86_64.whl"),
            url.replace(entry.name, "manifest.json"),
        ):
            async with session.get(missing, ssl=device) as unknown:
                assert unknown.status == 404, missing

        await hub.parts.store.revoke_device(identity.device_id, now=1.0, by="test")
        async with session.get(url, ssl=device) as revoked:
            assert revoked.status == 403
            assert "revoked" in (await revoked.json())["error"]["message"]


async def test_path_tricks_in_a_download_serve_nothing_outside_the_releases(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    entry, wheel = wheel_of(built)
    paths, _ = await enroll_device()
    device = device_context(paths)
    secret = b"SECRET-" + bytes(range(256)) * 4
    # Bait a traversal could reach: beside the releases, and in the hub's data folder.
    (hub.paths.agent_releases / "bait.whl").write_bytes(secret)
    (hub.paths.root / "bait.whl").write_bytes(secret)
    base = f"{hub.config.hub_url}/api/v1/device/agent-releases"
    tricks = [
        f"{VERSION}/..%2Fbait.whl",
        f"{VERSION}/..%2f..%2fbait.whl",
        f"{VERSION}/%2e%2e%2f%2e%2e%2fbait.whl",
        f"{VERSION}/..%5C..%5Cbait.whl",
        f"{VERSION}/../bait.whl",
        f"{VERSION}/../../bait.whl",
        "%2e%2e/bait.whl",
        f"..%2F{VERSION}/{entry.name}",
        "..%2F../bait.whl",
        f"{VERSION}/%2F{hub.paths.root.as_posix().lstrip('/').replace('/', '%2F')}%2Fbait.whl",
        f"{VERSION}/{entry.name}%00.whl",
        f"{VERSION}/.%2F{entry.name}",
    ]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/{VERSION}/{entry.name}", ssl=device) as real:
            assert real.status == 200  # the device may download, and does
            assert await real.read() == wheel
        for trick in tricks:
            # encoded: sent as written, with no dot segments resolved by the client.
            async with session.get(yarl.URL(f"{base}/{trick}", encoded=True), ssl=device) as got:
                body = await got.read()
                # A NUL is refused before any route looks (400); the rest find nothing.
                assert got.status == (400 if "%00" in trick else 404), (trick, got.status)
                assert b"SECRET-" not in body, trick
                assert body != wheel, trick


# -- agent roll-outs -----------------------------------------------------------------


async def _enrolled(enroll_device: Enroller, count: int) -> list[str]:
    return sorted([(await enroll_device())[1].device_id for _ in range(count)])


async def test_an_agent_rollout_releases_its_canaries_and_a_halt_takes_it_back(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    ids = await _enrolled(enroll_device, 3)
    assert await desired_agent(hub, ids) == {}

    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin, body={"agent": VERSION, "canary_share": 0.5}
    )

    assert started.status == 201, started.body
    rollout = started.body
    assert (rollout["kind"], rollout["model"], rollout["version"]) == ("agent", AGENT, VERSION)
    assert rollout["state"] == "canary"
    assert sorted(d["device"] for d in rollout["devices"]) == ids
    canaries = sorted(d["device"] for d in rollout["devices"] if d["stage"] == "canary")
    waiting = sorted(d["device"] for d in rollout["devices"] if d["stage"] == "rest")
    assert len(canaries) == 2  # ceil(0.5 * 3)
    assert {d["state"] for d in rollout["devices"] if d["stage"] == "canary"} == {"released"}
    assert {d["state"] for d in rollout["devices"] if d["stage"] == "rest"} == {"waiting"}
    assert rollout["counts"] == {"released": 2, "waiting": 1}
    shown = await api.call("GET", f"/api/v1/rollouts/{rollout['id']}", token=admin)
    assert (shown.body["kind"], shown.body["model"]) == ("agent", AGENT)

    manifest = agentrelease.read_folder(built)
    desired = await desired_agent(hub, ids)
    assert desired == {d: manifest for d in canaries}
    assert not set(desired) & set(waiting)

    halted = await api.call("POST", f"/api/v1/rollouts/{rollout['id']}/halt", token=admin)
    assert halted.status == 200, halted.body
    assert halted.body["state"] == "halted"
    assert await desired_agent(hub, ids) == {}


async def test_agent_rollouts_that_cannot_start_are_refused_beside_one_that_does(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    ids = await _enrolled(enroll_device, 2)

    async def start(body: dict[str, Any]) -> Reply:
        return await api.call("POST", "/api/v1/rollouts", token=admin, body=body)

    unknown = await start({"agent": "9.9.9", "canary_share": 0.5})
    assert unknown.status == 422, unknown.body
    assert unknown.error["code"] == "rollout_refused"
    assert "no agent release 9.9.9 was uploaded" in unknown.error["message"]
    for both in (
        {"agent": VERSION, "model": "vibration-anomaly", "version": "1.0.0"},
        {"agent": VERSION, "model": "vibration-anomaly"},
        {"agent": VERSION, "version": "1.0.0"},
    ):
        refused = await start(both)
        assert refused.status == 400, (both, refused.body)
        assert "not both" in refused.error["message"]
    for neither in ({}, {"canary_share": 0.5}, {"model": "vibration-anomaly"}):
        refused = await start(neither)
        assert refused.status == 400, (neither, refused.body)
        assert refused.error["details"]["field"] == "body.model"
    shadow = await start({"agent": VERSION, "mode": "shadow"})
    assert shadow.status == 422, shadow.body
    assert "cannot run in shadow" in shadow.error["message"]
    listed = await api.call("GET", "/api/v1/rollouts", token=admin)
    assert listed.body["items"] == []  # none of them left a roll-out
    assert await desired_agent(hub, ids) == {}

    started = await start({"agent": VERSION, "canary_share": 0.5})
    assert started.status == 201, started.body
    assert len(await desired_agent(hub, ids)) == 1


async def test_a_model_rollout_and_an_agent_rollout_coexist(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    model, meta, sample = bundle_parts(SHIPPED_MODELS[0])
    assert (await upload_model(hub, admin, model, meta, sample)).status == 201
    assert (await post_release(api, admin, parts_of(built))).status == 201
    ids = await _enrolled(enroll_device, 2)
    everyone = {"canary_share": 1.0}

    for_model = await api.call(
        "POST", "/api/v1/rollouts", token=admin,
        body={"model": meta["name"], "version": meta["version"], **everyone},
    )  # fmt: skip
    assert for_model.status == 201, for_model.body
    assert for_model.body["kind"] == "model"
    models_before = await hub.parts.store.desired_releases_of(ids)
    assert all(len(releases) == 1 for releases in models_before.values()), models_before

    for_agent = await api.call(
        "POST", "/api/v1/rollouts", token=admin, body={"agent": VERSION, **everyone}
    )
    assert for_agent.status == 201, for_agent.body
    assert for_agent.body["counts"] == {"released": 2}

    assert await hub.parts.store.desired_releases_of(ids) == models_before
    manifest = agentrelease.read_folder(built)
    assert await desired_agent(hub, ids) == {d: manifest for d in ids}
    model_rollout = await api.call("GET", f"/api/v1/rollouts/{for_model.body['id']}", token=admin)
    assert model_rollout.body["state"] == "canary"  # not superseded by the agent's
    assert model_rollout.body["counts"] == {"released": 2}
    listed = await api.call("GET", "/api/v1/rollouts", token=admin)
    assert [(r["kind"], r["model"]) for r in listed.body["items"]] == [
        ("agent", AGENT),
        ("model", meta["name"]),
    ]

    halted = await api.call("POST", f"/api/v1/rollouts/{for_agent.body['id']}/halt", token=admin)
    assert halted.status == 200, halted.body
    assert await desired_agent(hub, ids) == {}
    assert await hub.parts.store.desired_releases_of(ids) == models_before


async def _retained_offer(hub: Hub, paths: DevicePaths, device_id: str) -> wire.AgentOffer | None:
    """What the device finds retained on its down/agent topic when it subscribes (None if
    nothing comes within a few seconds)."""
    async with aiomqtt.Client(
        "127.0.0.1",
        hub.config.mqtt_port,
        identifier=device_id,
        tls_context=device_context(paths),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=30,
    ) as client:
        await client.subscribe(wire.down_topic(device_id, "agent"), qos=1)
        try:
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    envelope = wire.decode(
                        message.payload, kinds=wire.DOWN_KINDS, expected_kind="agent"
                    )
                    assert isinstance(envelope.body, wire.AgentOffer)
                    return envelope.body
        except TimeoutError:
            return None
    return None


@pytest.mark.timeout(300)
async def test_a_canary_finds_the_signed_release_offered_and_withdrawn_on_halt(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller
) -> None:
    admin = await api.token("admin")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    paths, identity = await enroll_device()
    device_id = identity.device_id
    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin, body={"agent": VERSION, "canary_share": 1.0}
    )
    assert started.status == 201, started.body
    manifest = agentrelease.read_folder(built)

    async def offered() -> AgentManifest | None:
        offer = await _retained_offer(hub, paths, device_id)
        if offer is None or offer.release is None:
            return None
        signed = Signed(offer.release.document, offer.release.signature)
        return agentrelease.verify(signing_key(hub), signed)[0]

    assert await eventually(offered, timeout=60, what="the offer") == manifest

    halted = await api.call("POST", f"/api/v1/rollouts/{started.body['id']}/halt", token=admin)
    assert halted.status == 200, halted.body

    async def withdrawn() -> bool:
        offer = await _retained_offer(hub, paths, device_id)
        return offer is not None and offer.release is None

    await eventually(withdrawn, timeout=60, what="the offer withdrawn")


# -- the CLI -------------------------------------------------------------------------


async def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`outpost-hub ARGV` as a user runs it, off the hub's event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.cli", *argv, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(argv, process.returncode, out.decode(), err.decode())


@pytest.mark.timeout(300)
async def test_the_cli_refuses_agent_and_model_together_or_neither_in_one_line(
    hub: Hub, api: ApiClient, built: Path, enroll_device: Enroller, tmp_path: Path
) -> None:
    admin = await api.token("admin", subject="alice")
    assert (await post_release(api, admin, parts_of(built))).status == 201
    ids = await _enrolled(enroll_device, 1)
    token_file = tmp_path / "admin.token"
    token_file.write_text(admin)
    remote = ("--hub", hub.config.hub_url, "--token-file", str(token_file),
              "--ca", str(hub.paths.ca_cert), "--no-follow")  # fmt: skip

    both = await _cli(
        "rollouts", "start", "--agent", VERSION, "vibration-anomaly", "1.0.0", *remote
    )
    neither = await _cli("rollouts", "start", *remote)
    half = await _cli("rollouts", "start", "vibration-anomaly", *remote)
    unknown = await _cli("rollouts", "start", "--agent", "9.9.9", *remote)

    for refused, said in (
        (both, "give --agent VERSION alone, or MODEL VERSION, not both"),
        (neither, "give MODEL VERSION, or --agent VERSION for an agent release"),
        (half, "give MODEL VERSION, or --agent VERSION for an agent release"),
    ):
        assert refused.returncode == 2, refused
        assert refused.stderr == f"outpost-hub: error: {said}\n", refused.stderr
        assert refused.stdout == ""
    assert unknown.returncode == 1, unknown
    assert "no agent release 9.9.9 was uploaded" in unknown.stderr
    assert "[HTTP 422]" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert (await api.call("GET", "/api/v1/rollouts", token=admin)).body["items"] == []

    started = await _cli("rollouts", "start", "--agent", VERSION, *remote)  # the same, alone
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("roll-out ")
    assert f"of the agent {VERSION} started" in started.stdout
    (rollout,) = (await api.call("GET", "/api/v1/rollouts", token=admin)).body["items"]
    assert (rollout["kind"], rollout["version"], rollout["created_by"]) == (
        "agent",
        VERSION,
        "alice",
    )
    # Counted as listed too, not only in GET /api/v1/rollouts/{id}.
    assert sum(rollout["counts"].values()) == len(ids), rollout["counts"]
    assert set(await desired_agent(hub, ids)) == set(ids)


async def test_a_release_taken_beside_the_running_hub_is_listed(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    viewer = await api.token("viewer")
    empty = await api.call("GET", "/api/v1/agent-releases", token=viewer)
    assert empty.status == 200, empty.body
    assert empty.body == {"items": []}
    assert (await api.call("GET", "/api/v1/agent-releases")).status == 401

    out = tmp_path / "release"
    for argv in (
        ["-m", "scripts.build_agent_release", "--out", str(out), "--no-dependencies",
         "--platform", "x86_64", "--version", "0.5.0"],
        ["-m", "hub.cli", "agent-releases", "upload", "--data", str(hub.paths.root), str(out)],
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=300,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    listed = await api.call("GET", "/api/v1/agent-releases", token=viewer)
    (item,) = listed.body["items"]
    assert (item["version"], item["platforms"], item["files"]) == ("0.5.0", ["x86_64"], 1)
    assert item["size"] > 0
    assert item["uploaded_by"].startswith("cli:")
