"""A certificate renewed by courier bundle (edge/couriercerts.py): checked before the
bundle applies anything, and never swapped for one that expires sooner than the one the
device holds (renewed over HTTPS since the bundle was made)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge import couriercerts
from edge.identity import DevicePaths, Identity
from hub.fleet import pki
from outpost import files
from outpost.courier.sealing import BundleError

DEVICE_ID = "dev-0123456789ab"
CA = pki.make_ca("Test CA")
KEY = pki.new_ec_key()


def issued(days: float) -> pki.Issued:
    return pki.issue(*CA, common_name=DEVICE_ID, public_key=KEY.public_key(), days=days)


@pytest.fixture
def device(tmp_path: Path) -> DevicePaths:
    """A device holding a certificate valid for 60 more days."""
    paths = DevicePaths(tmp_path / "device")
    paths.identity_dir.mkdir(parents=True)
    files.write_new(paths.key, pki.key_pem(KEY))
    files.replace(paths.ca_cert, pki.cert_pem(CA[1]))
    current = issued(60)
    files.replace(paths.cert, current.pem)
    Identity(
        device_id=DEVICE_ID,
        broker_url="mqtts://127.0.0.1:1",
        hub_url="https://127.0.0.1:1",
        enrolled_at=time.time(),
        cert_not_before=current.not_before.timestamp(),
        cert_not_after=current.not_after.timestamp(),
    ).save(paths)
    return paths


def test_a_carried_certificate_that_expires_sooner_is_not_installed(device: DevicePaths) -> None:
    held = device.cert.read_bytes()
    sooner, later = issued(30), issued(90)

    kept = couriercerts.install(
        device, sooner.pem, couriercerts.check(device, sooner.pem, KEY, DEVICE_ID)
    )
    assert kept.startswith("kept the one here")
    assert device.cert.read_bytes() == held

    renewed = couriercerts.install(
        device, later.pem, couriercerts.check(device, later.pem, KEY, DEVICE_ID)
    )
    assert renewed.startswith("renewed, valid until")
    assert device.cert.read_bytes() == later.pem
    assert Identity.load(device).cert_not_after == pytest.approx(later.not_after.timestamp())


def test_a_certificate_for_another_key_is_refused_by_the_check(device: DevicePaths) -> None:
    other = pki.issue(*CA, common_name=DEVICE_ID, public_key=pki.new_ec_key().public_key(), days=90)
    with pytest.raises(BundleError, match="the renewed certificate in the hub's bundle is refused"):
        couriercerts.check(device, other.pem, KEY, DEVICE_ID)
