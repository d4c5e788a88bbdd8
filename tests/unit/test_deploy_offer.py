"""What an offer of releases queues, skips or reports, without downloading anything (the
deployer's worker is not running here; see tests/integration/test_model_deploy.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.deploy import STATE_FILE, Deployer
from edge.deploystate import DeployStates, Record
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.inference.service import InferenceService
from edge.store import AgentStore
from outpost import offerseal, release, wire
from outpost.modelbundle import read_bundle
from tests.support import SHIPPED_MODELS

HUB_KEY = ed25519.Ed25519PrivateKey.generate()
VIBRATION = SHIPPED_MODELS[0]
DEVICE = "dev-1"


def signed(
    folder: Path, version: str, key: ed25519.Ed25519PrivateKey = HUB_KEY
) -> wire.SignedRelease:
    bundle = read_bundle(folder)
    assert bundle.sample is not None
    manifest = msgspec.structs.replace(bundle.manifest, version=version)
    s = release.sign(key, manifest, bundle.sample, time.time())
    return wire.SignedRelease(document=s.document, signature=s.signature)


def releases(*items: wire.SignedRelease) -> wire.ModelReleases:
    return wire.ModelReleases(releases=list(items))


class Deployed:
    """A deployer whose reports are kept in a list."""

    def __init__(self, root: Path) -> None:
        self.paths = DevicePaths(root)
        self.paths.identity_dir.mkdir(parents=True, exist_ok=True)
        self.paths.hub_signing_pub.write_bytes(
            HUB_KEY.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # No model is ever run here, so the service never touches its store.
        self.service = InferenceService(ModelDirectory(self.paths.models), cast(AgentStore, None))
        self.reports: list[wire.ModelState] = []
        self.deployer = self.restart()

    def restart(self) -> Deployer:
        """A new deployer on the same data folder, as after the agent restarts."""
        self.deployer = Deployer(
            self.paths, "https://hub.invalid", self.service, self.report, device_id=DEVICE
        )
        return self.deployer

    async def report(self, state: wire.ModelState) -> None:
        self.reports.append(state)

    def keep(self, *records: Record) -> None:
        DeployStates(list(records)).save(self.paths.models / STATE_FILE)


@pytest.fixture
def device(tmp_path: Path) -> Deployed:
    return Deployed(tmp_path / "device")


def sha_of(folder: Path) -> str:
    return read_bundle(folder).manifest.sha256


async def test_a_new_release_is_queued_once_however_often_it_is_offered(device: Deployed) -> None:
    offer = releases(signed(VIBRATION, "1.0.1"))
    await device.deployer.offer(offer)
    await device.deployer.offer(offer)

    assert device.deployer.queued() == [("vibration-anomaly", "1.0.1")]
    assert device.reports == []  # "downloading" comes from the worker, when it starts


async def test_a_newer_list_replaces_what_is_queued(device: Deployed) -> None:
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.2")))
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.2")]

    await device.deployer.offer(releases())
    assert device.deployer.queued() == []


async def test_a_bad_signature_is_reported_at_once_and_again_when_redelivered(
    device: Deployed,
) -> None:
    forged = signed(VIBRATION, "1.0.1", key=ed25519.Ed25519PrivateKey.generate())
    await device.deployer.offer(releases(forged))
    await device.deployer.offer(releases(forged))

    assert device.deployer.queued() == []
    assert [(r.name, r.version, r.state) for r in device.reports] == [
        ("vibration-anomaly", "1.0.1", "failed"),
    ] * 2
    assert "signature does not verify" in device.reports[0].detail
    # The good release of that version is not blocked by the forgery.
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.1")]


async def test_a_release_that_failed_before_is_reported_not_retried(device: Deployed) -> None:
    device.keep(
        Record("vibration-anomaly", "1.0.1", sha_of(VIBRATION), "failed", "self-test failed")
    )
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))

    assert device.deployer.queued() == []
    assert device.reports == [
        wire.ModelState(
            name="vibration-anomaly", version="1.0.1", state="failed", detail="self-test failed"
        )
    ]
    assert device.deployer.states() == device.reports


async def test_a_release_refused_by_policy_is_tried_again_when_offered_again(
    device: Deployed,
) -> None:
    device.keep(
        Record("vibration-anomaly", "1.0.1", sha_of(VIBRATION), "failed", "policy", final=False)
    )
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.1")]


async def test_a_missing_hub_key_refuses_releases_without_raising(device: Deployed) -> None:
    device.paths.hub_signing_pub.unlink()
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))

    assert device.deployer.queued() == []
    assert [r.state for r in device.reports] == ["failed"]
    assert "signing key is unusable" in device.reports[0].detail


# ------------------------------------------------------------------ sealed offers


def sealed(
    seq: int,
    *items: wire.SignedRelease,
    device_id: str = DEVICE,
    key: ed25519.Ed25519PrivateKey = HUB_KEY,
    shadows: tuple[wire.SignedRelease, ...] = (),
) -> wire.ModelReleases:
    """An offer as the hub makes it to a device that checks seals."""
    seal = offerseal.sign(
        key,
        device_id,
        seq,
        [r.document for r in items],
        [r.document for r in shadows],
        time.time(),
    )
    return wire.ModelReleases(
        releases=list(items),
        shadows=list(shadows),
        seal=wire.OfferSeal(document=seal.document, signature=seal.signature),
    )


async def test_an_older_sealed_offer_is_ignored_even_after_a_restart(device: Deployed) -> None:
    old, new = signed(VIBRATION, "1.0.1"), signed(VIBRATION, "1.0.2")
    replayed = sealed(7, old)
    await device.deployer.offer(replayed)
    await device.deployer.offer(sealed(9, new))
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.2")]

    await device.deployer.offer(replayed)  # what a broker could send again
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.2")]

    device.restart()
    await device.deployer.offer(replayed)
    assert device.deployer.queued() == []
    # The control: the offer it took last is still taken (the broker redelivers it).
    await device.deployer.offer(sealed(9, new))
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.2")]


async def test_an_unsealed_offer_is_taken_only_until_a_sealed_one_was(device: Deployed) -> None:
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))  # a hub without seals
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.1")]

    await device.deployer.offer(sealed(3, signed(VIBRATION, "1.0.2")))
    await device.deployer.offer(releases(signed(VIBRATION, "1.0.1")))  # the seal stripped
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.2")]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(
            lambda r: sealed(5, r, key=ed25519.Ed25519PrivateKey.generate()), id="foreign key"
        ),
        pytest.param(lambda r: sealed(5, r, device_id="dev-2"), id="another device"),
        pytest.param(
            lambda r: msgspec.structs.replace(sealed(5, signed(VIBRATION, "1.0.3")), releases=[r]),
            id="another release",
        ),
        pytest.param(
            lambda r: msgspec.structs.replace(sealed(5, r, shadows=(r,)), shadows=[]),
            id="a shadow it names left out",
        ),
        pytest.param(
            lambda r: msgspec.structs.replace(sealed(5, r), shadows=[r]), id="a shadow added"
        ),
    ],
)
async def test_an_offer_whose_seal_is_refused_is_ignored_as_a_whole(
    device: Deployed, bad: Any
) -> None:
    offered = signed(VIBRATION, "1.0.2")
    forged: wire.ModelReleases = bad(offered)
    await device.deployer.offer(forged)
    assert device.deployer.queued() == []
    assert device.reports == []
    # Nothing of it was taken: a good offer numbered below it is still taken.
    await device.deployer.offer(sealed(4, offered))
    assert device.deployer.queued() == [("vibration-anomaly", "1.0.2")]


async def test_the_number_taken_is_kept_with_the_deploy_states(device: Deployed) -> None:
    await device.deployer.offer(sealed(12, signed(VIBRATION, "1.0.1")))
    kept = DeployStates.load(device.paths.models / STATE_FILE)
    assert kept.offer_seq == 12
    # An agent from before seals wrote no number: read as none taken.
    device.keep()
    assert DeployStates.load(device.paths.models / STATE_FILE).offer_seq == 0
