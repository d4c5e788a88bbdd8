"""Models and roll-outs: verifying a signed release against a bare Ed25519 check; the
hub's upload check against a bare load-and-run of the same model; and a staged roll-out
to three real agents (download with mTLS, sha256, install, self-test, swap, report)
against a bare in-process download and load of the same file."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.enroll import enroll
from edge.identity import DevicePaths, Identity
from edge.inference.directory import ModelDirectory
from edge.inference.runner import ModelRunner
from edge.inference.runtime import choose_runtime
from hub.app import Hub
from hub.models.rollouts import SEND_AT_ONCE, sealed_offer
from hub.store import HelloSeen, HubStore, StoredModel
from outpost import release, wire
from outpost.modelbundle import read_bundle
from tests.api_client import ApiClient
from tests.bench.common import Result, median_time, per_second, running_hub
from tests.model_upload import bundle_parts, upload
from tests.support import PROFILES, SHIPPED_MODELS, AgentProcess, device_online, mint_token

VIBRATION = SHIPPED_MODELS[0]
AGENTS = 3
VERIFY_ROUNDS = 2000


def _verify_rates() -> tuple[float, float]:
    key = ed25519.Ed25519PrivateKey.generate()
    bundle = read_bundle(VIBRATION)
    assert bundle.sample is not None
    signed = release.sign(key, bundle.manifest, bundle.sample, time.time())
    public = key.public_key()

    def ours() -> None:
        for _ in range(VERIFY_ROUNDS):
            release.verify(public, signed)

    def bare() -> None:
        for _ in range(VERIFY_ROUNDS):
            public.verify(signed.signature, signed.document)

    return (
        per_second(VERIFY_ROUNDS, median_time(ours, repeat=3)),
        per_second(VERIFY_ROUNDS, median_time(bare, repeat=3)),
    )


OFFER_DEVICES = 1000


def _offer_rates(root: Path) -> tuple[float, float, float, float]:
    """Offers made per second for devices that check seals (numbered in a write
    transaction, each sealed with the hub's key) vs the plain read of what each should
    run that offers were before seals, on a SQLite hub with a roll-out to all of them;
    then the same for as many devices no roll-out names (a ramp of hellos: nothing to
    offer, so no number and no lock)."""
    store = HubStore(root / "offers.db")
    key = ed25519.Ed25519PrivateKey.generate()
    try:
        now = time.time()
        hellos = [
            HelloSeen(f"dev-offer{n:05d}", "c", now, "generic", "1", 10.0, {}, sealed_offers=True)
            for n in range(OFFER_DEVICES)
        ]
        asyncio.run(store.record_presence(hellos))
        bundle = read_bundle(VIBRATION)
        assert bundle.sample is not None
        signed = release.sign(key, bundle.manifest, bundle.sample, now)
        model = StoredModel(
            bundle.manifest.name, bundle.manifest.version, bundle.manifest.sha256,
            bundle.manifest.size, bundle.manifest.to_dict(), signed.document, signed.signature,
            now, "bench",
        )  # fmt: skip
        assert asyncio.run(store.add_model(model))
        rollout = store.create_rollout(
            name=model.name, version=model.version, selector={}, canary_share=1.0, by="bench",
            now=now,
        )  # fmt: skip
        asyncio.run(rollout)
        later = [
            HelloSeen(f"dev-later{n:05d}", "c", now, "generic", "1", 10.0, {}, sealed_offers=True)
            for n in range(OFFER_DEVICES)
        ]
        asyncio.run(store.record_presence(later))  # after the roll-out: none names them

        def chunked(hellos: list[HelloSeen]) -> list[list[str]]:
            ids = [h.device_id for h in hellos]
            return [ids[i : i + SEND_AT_ONCE] for i in range(0, len(ids), SEND_AT_ONCE)]

        def ours(chunks: list[list[str]]) -> None:
            for chunk in chunks:
                offers = asyncio.run(store.offers_of(chunk, now=time.time()))
                for offer in offers.values():
                    if offer.releases or offer.shadows:  # as the publisher sends
                        wire.encode("models", sealed_offer(key, offer, time.time()))

        def bare(chunks: list[list[str]]) -> None:
            for chunk in chunks:
                desired = asyncio.run(store.desired_releases_of(chunk))
                for releases in desired.values():
                    if releases:
                        body = wire.ModelReleases(
                            releases=[
                                wire.SignedRelease(document=d, signature=s) for d, s in releases
                            ]
                        )
                        wire.encode("models", body)

        named, unnamed = chunked(hellos), chunked(later)
        return (
            per_second(OFFER_DEVICES, median_time(lambda: ours(named), repeat=3)),
            per_second(OFFER_DEVICES, median_time(lambda: bare(named), repeat=3)),
            per_second(OFFER_DEVICES, median_time(lambda: ours(unnamed), repeat=3)),
            per_second(OFFER_DEVICES, median_time(lambda: bare(unnamed), repeat=3)),
        )
    finally:
        store.close()


def _bare_load(folder: Path) -> None:
    runner = ModelRunner(
        read_bundle(folder), choose_runtime(), num_threads=1, interpreters=1, queue_limit=0
    )
    runner.load()  # hash, interpreter, sample
    runner.close()


async def _bare_fetch_and_load(hub: Hub, device: DevicePaths, scratch: Path) -> float:
    """Download the same file over the same mTLS endpoint and load it in-process."""
    url = hub.config.hub_url + "/api/v1/device/models/vibration-anomaly/1.1.0/model.tflite"
    context = ssl.create_default_context(cafile=str(device.ca_cert))
    context.load_cert_chain(device.cert, device.key)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        body = await response.read()
    folder = scratch / "bare"
    folder.mkdir(exist_ok=True)
    (folder / "model.tflite").write_bytes(body)
    for name in ("model.json", "sample.json"):
        (folder / name).write_bytes(
            (hub.paths.models / "vibration-anomaly/1.1.0" / name).read_bytes()
        )
    await asyncio.to_thread(_bare_load, folder)
    return time.perf_counter() - started


async def _rollout(root: Path) -> tuple[float, float, float, float, float]:
    async with running_hub(root / "hub") as hub:
        api = ApiClient(hub)
        agents: list[AgentProcess] = []
        try:
            admin = await api.token("admin")
            devices = []
            for n in range(AGENTS):
                device = DevicePaths(root / f"device-{n}")
                await enroll(await mint_token(hub), device, PROFILES / "raspberry-pi-4.toml")
                ModelDirectory(device.models).install(VIBRATION)
                agents.append(
                    AgentProcess(device.root, log=root / f"agent-{n}.log", log_level="info")
                )
                devices.append(device)
            for device in devices:  # every agent connected before the clock starts
                identity = Identity.load(device)
                while not await device_online(hub, identity.device_id):
                    await asyncio.sleep(0.05)
            model, manifest, sample = bundle_parts(VIBRATION, version="1.1.0")
            started = time.perf_counter()
            assert (await upload(hub, admin, model, manifest, sample)).status == 201
            upload_s = time.perf_counter() - started

            started = time.perf_counter()
            reply = await api.call(
                "POST",
                "/api/v1/rollouts",
                token=admin,
                body={"model": "vibration-anomaly", "version": "1.1.0", "canary_share": 0.3},
            )
            rollout_id = reply.body["id"]
            canary_s = None
            while True:
                body = (await api.call("GET", f"/api/v1/rollouts/{rollout_id}", token=admin)).body
                if canary_s is None and body["state"] != "canary":
                    canary_s = time.perf_counter() - started
                if body["state"] in ("completed", "halted"):
                    assert body["state"] == "completed", body
                    break
                await asyncio.sleep(0.01)  # polling the API, as an operator would
            total_s = time.perf_counter() - started
            bare_load = await asyncio.to_thread(median_time, lambda: _bare_load(VIBRATION))
            bare_fetch = await _bare_fetch_and_load(hub, devices[0], root)
            assert canary_s is not None
            return upload_s, bare_load, canary_s, total_s, bare_fetch
        finally:
            for agent in agents:
                agent.stop()
            await api.close()


def run(root: Path) -> list[Result]:
    ours, bare = _verify_rates()
    offers, plain, nothing, nothing_plain = _offer_rates(root)
    upload_s, bare_load, canary_s, total_s, bare_fetch = asyncio.run(_rollout(root))
    return [
        Result("model release verify (signature + schema)", ours, bare, "/s", "bare: Ed25519"),
        Result(
            f"offers sealed and encoded, {OFFER_DEVICES:,} devices",
            offers,
            plain,
            "/s",
            "bare: the unsealed read and encode",
        ),
        Result(
            f"offers for hellos of {OFFER_DEVICES:,} devices no roll-out names",
            nothing,
            nothing_plain,
            "/s",
            "bare: the same unsealed read",
        ),
        Result(
            "model upload, checked (load + sample) and signed",
            upload_s * 1000,
            bare_load * 1000,
            "ms",
            "bare: load + sample in-process",
        ),
        Result(
            "roll-out, canary stage (1 of 3 agents active)",
            canary_s * 1000,
            bare_fetch * 1000,
            "ms",
            "bare: mTLS download + load in-process",
        ),
        Result(
            f"roll-out, all {AGENTS} agents active", total_s * 1000, bare_fetch * 1000, "ms", ""
        ),
    ]
