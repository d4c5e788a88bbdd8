"""Model roll-out on the device, with real parts: a mutual-TLS HTTPS server standing in
for the hub's download route (aiohttp `FileResponse`, which honours `Range`), signed
releases, a real model directory and store, and the real interpreter.

Only vibration-anomaly 1.0.0 is installed at the start; a "new version" is the shipped
bundle with another version in its manifest (the same model bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.deploy import Deployer
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.inference.reporting import Reporting
from edge.inference.runner import ModelFault
from edge.inference.service import InferenceService
from edge.store import AgentStore, Bounds
from hub.fleet import pki
from outpost import release, tls, wire
from outpost.aio import cancel_until_done
from outpost.modelbundle import Expected, read_bundle
from tests.support import SHIPPED_MODELS, eventually, free_port

VIBRATION, SURFACE = "vibration-anomaly", "surface-defect"
FOLDERS = {VIBRATION: SHIPPED_MODELS[0], SURFACE: SHIPPED_MODELS[1]}
UNBOUNDED = Bounds(0, 0, 0)
DEVICE = "dev-1"


# ------------------------------------------------------------------- the fake hub


@dataclasses.dataclass
class Served:
    """What the server gives for one model version, and what it was asked."""

    body: bytes
    cut_after: int | None = None  # the first response stops after this many bytes
    honour_range: bool = True
    gate: asyncio.Event | None = None  # the response waits until it is set
    errors: list[int] = dataclasses.field(default_factory=list)  # statuses answered first
    ranges: list[str | None] = dataclasses.field(default_factory=list)


class ModelServer:
    """HTTPS with client certificates required, serving model files by name and version."""

    def __init__(self, folder: Path, downloads: Path) -> None:
        self.folder = folder
        self.downloads = downloads  # where the device keeps partial downloads
        self.served: dict[tuple[str, str], Served] = {}
        self.requests: list[tuple[str, str]] = []
        self.peers: list[str] = []

    def serve(self, name: str, version: str, body: bytes | None = None, **kw: Any) -> Served:
        body = FOLDERS[name].joinpath("model.tflite").read_bytes() if body is None else body
        self.served[(name, version)] = entry = Served(body, **kw)
        return entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name, version = request.match_info["name"], request.match_info["version"]
        self.requests.append((name, version))
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        self.peers.append(dict(item[0] for item in peer["subject"])["commonName"] if peer else "")
        entry = self.served.get((name, version))
        if entry is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": f"no release {name} {version}"}},
                status=404,
            )
        entry.ranges.append(request.headers.get("Range"))
        if entry.gate is not None:
            await entry.gate.wait()
        if entry.errors:
            return web.Response(status=entry.errors.pop(0), text="try again later")
        if entry.cut_after is not None:
            cut, entry.cut_after = entry.cut_after, None
            return await self._cut(request, entry.body, cut, self.downloads)
        if not entry.honour_range:
            return web.Response(body=entry.body, content_type="application/octet-stream")
        # A file on disk, as the hub serves it: aiohttp answers a Range with a 206.
        path = self.folder / f"{name}-{version}.tflite"
        path.write_bytes(entry.body)
        return web.FileResponse(path)

    @staticmethod
    async def _cut(
        request: web.Request, body: bytes, cut: int, downloads: Path
    ) -> web.StreamResponse:
        """Promise the whole file, send `cut` bytes, then drop the connection once the
        device has written them (a client drops what it holds unread when the
        connection breaks, so the cut waits for the bytes to reach the disk)."""
        response = web.StreamResponse()
        response.content_length = len(body)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        await response.write(body[:cut])

        async def written() -> bool:
            return any(p.stat().st_size >= cut for p in downloads.glob("*.part"))

        await eventually(written, what=f"{cut} bytes in a partial download")
        assert request.transport is not None
        request.transport.abort()
        return response


@dataclasses.dataclass
class Device:
    paths: DevicePaths
    directory: ModelDirectory
    service: InferenceService
    store: AgentStore
    server: ModelServer
    hub_key: ed25519.Ed25519PrivateKey
    hub_url: str
    reports: list[wire.ModelState]
    deployer: Deployer | None = None
    task: asyncio.Task[None] | None = None

    async def report(self, state: wire.ModelState) -> None:
        self.reports.append(state)

    async def start_deployer(self) -> Deployer:
        await self.stop_deployer()
        self.deployer = Deployer(
            self.paths, self.hub_url, self.service, self.report, device_id=DEVICE, retry_cap=0.05
        )
        self.task = asyncio.create_task(self.deployer.run(), name="test.deployer")
        return self.deployer

    async def stop_deployer(self) -> None:
        if self.task is not None:
            await cancel_until_done(self.task)
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def release(
        self,
        name: str,
        version: str,
        *,
        key: ed25519.Ed25519PrivateKey | None = None,
        expected: Expected | None = None,
    ) -> wire.SignedRelease:
        """The shipped bundle of `name` as release `version`, signed by the hub."""
        bundle = read_bundle(FOLDERS[name])
        assert bundle.sample is not None
        manifest = msgspec.structs.replace(bundle.manifest, version=version)
        sample = (
            bundle.sample
            if expected is None
            else msgspec.structs.replace(bundle.sample, expected=expected)
        )
        s = release.sign(key or self.hub_key, manifest, sample, time.time())
        return wire.SignedRelease(document=s.document, signature=s.signature)

    async def offer(self, *items: wire.SignedRelease) -> None:
        assert self.deployer is not None
        await self.deployer.offer(wire.ModelReleases(releases=list(items)))

    async def state(self, name: str, version: str, state: str) -> wire.ModelState:
        """Wait for the report of `name` `version` in `state`."""

        async def seen() -> wire.ModelState | None:
            return next(
                (r for r in self.reports if (r.name, r.version, r.state) == (name, version, state)),
                None,
            )

        found = await eventually(seen, timeout=10, what=f"a report of {name} {version} {state}")
        assert found is not None
        return found

    def history(self, name: str) -> list[tuple[str, str]]:
        return [(r.version, r.state) for r in self.reports if r.name == name]

    async def infer(self, name: str) -> str:
        """Run the model's own sample; return the version that answered."""
        bundle = read_bundle(FOLDERS[name])
        assert bundle.sample is not None
        outcome = await self.service.infer(name, bundle.sample.input, "int8")
        assert outcome.inference.label == bundle.sample.expected.label
        return outcome.version

    def leftovers(self) -> list[str]:
        downloads = self.paths.models / ".downloads"
        return sorted(p.name for p in downloads.iterdir()) if downloads.exists() else []


def write_identity(paths: DevicePaths, hub_key: ed25519.Ed25519PrivateKey) -> Path:
    """A fleet CA, a device certificate and the hub's signing key in `paths`; return the
    folder holding the server's certificate and key."""
    ca_key, ca_cert = pki.make_ca("test fleet CA")
    paths.identity_dir.mkdir(parents=True)
    paths.ca_cert.write_bytes(pki.cert_pem(ca_cert))
    device_key = pki.new_ec_key()
    device = pki.issue(
        ca_key, ca_cert, common_name="dev-test000001", public_key=device_key.public_key(), days=1
    )
    paths.cert.write_bytes(device.pem)
    paths.key.write_bytes(pki.key_pem(device_key))
    paths.hub_signing_pub.write_bytes(
        hub_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    server_dir = paths.root.parent / "server"
    server_dir.mkdir()
    server_key = pki.new_ec_key()
    server = pki.issue(
        ca_key,
        ca_cert,
        common_name="hub",
        public_key=server_key.public_key(),
        days=1,
        server_names=["127.0.0.1"],
    )
    (server_dir / "server.crt").write_bytes(server.pem)
    (server_dir / "server.key").write_bytes(pki.key_pem(server_key))
    return server_dir


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Device]:
    hub_key = ed25519.Ed25519PrivateKey.generate()
    paths = DevicePaths(tmp_path / "device")
    server_dir = write_identity(paths, hub_key)

    server = ModelServer(server_dir, paths.models / ".downloads")
    app = web.Application()
    app.router.add_get("/api/v1/device/models/{name}/{version}/model.tflite", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = tls.server_context(
        server_dir / "server.crt",
        server_dir / "server.key",
        client_ca=paths.ca_cert,
        client_cert_optional=False,
    )
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()

    directory = ModelDirectory(paths.models)
    directory.install(FOLDERS[VIBRATION])
    store = AgentStore(tmp_path / "store.db", {s: UNBOUNDED for s in wire.STREAMS})
    await store.start()
    service = InferenceService(directory, store, reporting=Reporting("none"))
    await service.start()
    found = Device(
        paths, directory, service, store, server, hub_key, f"https://127.0.0.1:{port}", []
    )
    await found.start_deployer()
    try:
        yield found
    finally:
        await found.stop_deployer()
        await service.close()
        await store.close()
        await runner.cleanup()


# ------------------------------------------------------------------------ tests


async def test_a_good_release_is_swapped_in_while_the_old_version_serves(device: Device) -> None:
    gate = asyncio.Event()
    device.server.serve(VIBRATION, "1.0.1", gate=gate)
    await device.offer(device.release(VIBRATION, "1.0.1"))

    await device.state(VIBRATION, "1.0.1", "downloading")
    assert await device.infer(VIBRATION) == "1.0.0"  # the download waits; the old one serves

    # Inferences keep running across the swap, and every one is answered.
    answered: list[str] = []
    stop = asyncio.Event()

    async def keep_asking() -> None:
        while not stop.is_set():
            answered.append(await device.infer(VIBRATION))
            await asyncio.sleep(0)  # the asker's pace: yield once, so the swap goes on too

    asking = asyncio.create_task(keep_asking())
    gate.set()
    await device.state(VIBRATION, "1.0.1", "active")
    stop.set()
    await asking

    assert await device.infer(VIBRATION) == "1.0.1"
    assert answered == sorted(answered)  # 1.0.0 until the swap, 1.0.1 after
    assert device.history(VIBRATION) == [("1.0.1", "downloading"), ("1.0.1", "active")]
    assert device.directory.active(VIBRATION) == "1.0.1"
    assert device.server.peers == ["dev-test000001"]  # the device's certificate was shown
    (info,) = device.service.inventory()
    assert (info.version, info.state) == ("1.0.1", "ready")
    (listed,) = device.service.models()
    assert listed["versions"] == ["1.0.0", "1.0.1"]
    assert device.leftovers() == []
    assert device.deployer is not None
    assert device.deployer.states() == [device.reports[-1]]


async def test_a_new_model_becomes_a_new_slot(device: Device) -> None:
    device.server.serve(SURFACE, "1.0.0")
    await device.offer(device.release(SURFACE, "1.0.0"))

    await device.state(SURFACE, "1.0.0", "active")
    assert await device.infer(SURFACE) == "1.0.0"
    assert [m.name for m in device.service.inventory()] == [SURFACE, VIBRATION]


async def test_bytes_that_do_not_match_the_manifest_are_refused(device: Device) -> None:
    good = FOLDERS[VIBRATION].joinpath("model.tflite").read_bytes()
    tampered = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    device.server.serve(VIBRATION, "1.0.1", body=tampered)
    await device.offer(device.release(VIBRATION, "1.0.1"))

    failed = await device.state(VIBRATION, "1.0.1", "failed")
    manifest = read_bundle(FOLDERS[VIBRATION]).manifest
    assert failed.detail.startswith("the download does not match the signed manifest: sha256 ")
    assert failed.detail.endswith(f", expected {manifest.sha256}")
    assert await device.infer(VIBRATION) == "1.0.0"
    assert device.directory.versions(VIBRATION) == ["1.0.0"]
    assert device.leftovers() == []  # the partial is gone


async def test_a_file_of_another_size_is_refused(device: Device) -> None:
    good = FOLDERS[VIBRATION].joinpath("model.tflite").read_bytes()
    device.server.serve(VIBRATION, "1.0.1", body=good + b"extra")
    await device.offer(device.release(VIBRATION, "1.0.1"))

    failed = await device.state(VIBRATION, "1.0.1", "failed")
    assert f"{len(good) + 5} bytes, expected {len(good)}" in failed.detail
    assert device.leftovers() == []


async def test_a_release_with_a_bad_signature_is_not_downloaded(device: Device) -> None:
    device.server.serve(VIBRATION, "1.0.1")
    forged = device.release(VIBRATION, "1.0.1", key=ed25519.Ed25519PrivateKey.generate())
    await device.offer(forged)

    failed = await device.state(VIBRATION, "1.0.1", "failed")
    assert "signature does not verify" in failed.detail
    assert device.server.requests == []
    assert device.leftovers() == []
    assert await device.infer(VIBRATION) == "1.0.0"


async def test_a_release_that_fails_its_self_test_leaves_the_old_version_serving(
    device: Device,
) -> None:
    device.server.serve(VIBRATION, "1.0.1")
    wrong = Expected(label="normal", output=[127, -128, -128, -128])
    await device.offer(device.release(VIBRATION, "1.0.1", expected=wrong))

    failed = await device.state(VIBRATION, "1.0.1", "failed")
    assert "the sample gave" in failed.detail
    assert device.directory.active(VIBRATION) == "1.0.0"
    assert (device.paths.models / VIBRATION / "active").read_text().strip() == "1.0.0"
    assert device.directory.versions(VIBRATION) == ["1.0.0"]  # the refused copy is removed
    assert await device.infer(VIBRATION) == "1.0.0"


@pytest.mark.parametrize("honour_range", [True, False], ids=["206", "200-start-over"])
async def test_a_cut_download_resumes_where_it_stopped(device: Device, honour_range: bool) -> None:
    served = device.server.serve(VIBRATION, "1.0.1", cut_after=5000, honour_range=honour_range)
    await device.offer(device.release(VIBRATION, "1.0.1"))

    await device.state(VIBRATION, "1.0.1", "active")
    assert served.ranges == [None, "bytes=5000-"]
    installed = device.paths.models / VIBRATION / "1.0.1" / "model.tflite"
    assert installed.read_bytes() == served.body
    assert await device.infer(VIBRATION) == "1.0.1"
    assert device.leftovers() == []


async def test_a_hub_that_is_busy_or_failing_is_asked_again(device: Device) -> None:
    served = device.server.serve(VIBRATION, "1.0.1", errors=[503, 429, 500])
    await device.offer(device.release(VIBRATION, "1.0.1"))

    await device.state(VIBRATION, "1.0.1", "active")
    assert len(served.ranges) == 4
    assert device.history(VIBRATION) == [("1.0.1", "downloading"), ("1.0.1", "active")]


async def test_an_unknown_release_is_reported_with_the_hubs_reason(device: Device) -> None:
    await device.offer(device.release(VIBRATION, "1.0.1"))  # the server has no such file

    failed = await device.state(VIBRATION, "1.0.1", "failed")
    assert "HTTP 404: no release vibration-anomaly 1.0.1" in failed.detail
    assert await device.infer(VIBRATION) == "1.0.0"


async def test_a_model_the_policy_does_not_allow_is_not_downloaded(device: Device) -> None:
    device.server.serve(SURFACE, "1.0.0")
    device.service.allowed_models = frozenset({VIBRATION})
    await device.offer(device.release(SURFACE, "1.0.0"))

    failed = await device.state(SURFACE, "1.0.0", "failed")
    assert "not allowed by policy" in failed.detail
    assert device.server.requests == []

    # A later policy that allows it: the redelivered list deploys it.
    device.service.allowed_models = frozenset()
    await device.offer(device.release(SURFACE, "1.0.0"))
    await device.state(SURFACE, "1.0.0", "active")


async def test_the_same_offer_twice_deploys_once(device: Device) -> None:
    gate = asyncio.Event()
    device.server.serve(VIBRATION, "1.0.1", gate=gate)
    offer = device.release(VIBRATION, "1.0.1")
    await device.offer(offer)
    await device.state(VIBRATION, "1.0.1", "downloading")
    await device.offer(offer)  # redelivered while it downloads
    gate.set()
    await device.state(VIBRATION, "1.0.1", "active")

    await device.offer(offer)  # and again once it is active (a reconnect)
    # Something else to do, to know the deployer has looked at everything offered.
    device.server.serve(SURFACE, "1.0.0")
    await device.offer(offer, device.release(SURFACE, "1.0.0"))
    await device.state(SURFACE, "1.0.0", "active")

    # Installed once; each later offer only says again that it is active (a roll-out of
    # that version may be waiting on the word).
    assert device.history(VIBRATION) == [
        ("1.0.1", "downloading"),
        ("1.0.1", "active"),
        ("1.0.1", "active"),
        ("1.0.1", "active"),
    ]
    assert device.server.requests == [(VIBRATION, "1.0.1"), (SURFACE, "1.0.0")]


async def test_an_offer_while_the_deploy_finishes_hears_active(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deployer prunes older versions after the "active" report; an offer that comes
    # meanwhile (a reconnect) must hear the word again, as any later offer does.
    pruning, pruned = threading.Event(), threading.Event()
    prune = device.directory.prune

    def held_prune(name: str, keep: set[str]) -> list[str]:
        pruning.set()
        pruned.wait(10)
        return prune(name, keep)

    monkeypatch.setattr(device.directory, "prune", held_prune)
    device.server.serve(VIBRATION, "1.0.1")
    offer = device.release(VIBRATION, "1.0.1")
    await device.offer(offer)
    assert await asyncio.to_thread(pruning.wait, 10)
    assert device.history(VIBRATION)[-1] == ("1.0.1", "active")

    await device.offer(offer)
    pruned.set()
    assert device.history(VIBRATION) == [
        ("1.0.1", "downloading"),
        ("1.0.1", "active"),
        ("1.0.1", "active"),
    ]
    assert device.server.requests == [(VIBRATION, "1.0.1")]


async def test_a_failed_release_is_not_retried_after_a_restart(device: Device) -> None:
    device.server.serve(VIBRATION, "1.0.1")
    wrong = Expected(label="normal", output=[127, -128, -128, -128])
    offer = device.release(VIBRATION, "1.0.1", expected=wrong)
    await device.offer(offer)
    failed = await device.state(VIBRATION, "1.0.1", "failed")

    device.reports.clear()
    deployer = await device.start_deployer()  # a new deployer, reading its file
    await device.offer(offer)

    assert device.reports == [failed]  # reported again at once, not tried again
    assert deployer.states() == [failed]
    assert deployer.queued() == []
    assert device.server.requests == [(VIBRATION, "1.0.1")]


async def test_a_version_that_faults_in_use_is_rolled_back(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    device.server.serve(VIBRATION, "1.0.1")
    offer = device.release(VIBRATION, "1.0.1")
    await device.offer(offer)
    await device.state(VIBRATION, "1.0.1", "active")

    # The interpreter of the new version starts failing on every request.
    runner = device.service.runner(VIBRATION)

    def broken(*args: object) -> object:
        raise ModelFault(f"{VIBRATION}: the interpreter failed: tensor arena corrupted")

    monkeypatch.setattr(runner, "run_blocking", broken)
    for _ in range(5):
        with pytest.raises(ModelFault):
            await device.infer(VIBRATION)

    rolled = await device.state(VIBRATION, "1.0.1", "rolled_back")
    assert "5 faults in a row" in rolled.detail
    assert "tensor arena corrupted" in rolled.detail
    assert "1.0.0 serves again" in rolled.detail
    assert await device.infer(VIBRATION) == "1.0.0"
    assert device.directory.active(VIBRATION) == "1.0.0"

    # The retained list names 1.0.1 still: it stays rolled back, reported again.
    device.reports.clear()
    await device.offer(offer)
    assert [(r.version, r.state) for r in device.reports] == [("1.0.1", "rolled_back")]
    assert device.server.requests == [(VIBRATION, "1.0.1")]


async def test_faults_of_a_version_serving_since_start_are_only_counted(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = device.service.runner(VIBRATION)

    def broken(*args: object) -> object:
        raise ModelFault("the interpreter failed")

    monkeypatch.setattr(runner, "run_blocking", broken)
    for _ in range(7):
        with pytest.raises(ModelFault):
            await device.infer(VIBRATION)

    (listed,) = device.service.models()
    assert (listed["version"], listed["faults_in_a_row"]) == ("1.0.0", 7)
    assert device.service.runner(VIBRATION) is runner
    assert device.reports == []
