"""Who may sign a device bundle the hub imports: a certificate the hub issued to that
device (its registry of certificates says so), not expired longer ago than a renewal
allows (`device_cert_grace_days`, 30 by default), counted on the hub's clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hub.fleet import pki
from outpost.courier.sealing import BundleError
from tests.courier_rig import DAY, bundle, enroll, records, rig


async def test_a_bundle_signed_with_a_certificate_expired_past_the_grace_period_is_refused(
    tmp_path: Path,
) -> None:
    with rig(tmp_path) as r:
        site = await enroll(r, "dev-expired01", days=1)
        # 200 days on, the key's holder makes a bundle dated as it likes.
        later = time.time() + 200 * DAY
        for made in (later - 60, time.time()):  # its date is its own word: not trusted
            sealed = bundle(r, site, [records("results", [1, 2, 3])], created_at=made)
            with pytest.raises(BundleError, match=r"expired on .* more than the grace period"):
                await r.desk.importer.import_bundle(sealed, now=later)
        assert await r.store.stream_marks([site.device_id]) == {}


async def test_a_bundle_signed_with_a_certificate_expired_within_the_grace_period_is_taken(
    tmp_path: Path,
) -> None:
    """A device at a site with no link whose renewal comes late still gets its records
    in, and its renewal answered, as over HTTPS."""
    with rig(tmp_path) as r:
        site = await enroll(r, "dev-latesite1", days=1)
        later = time.time() + 10 * DAY  # expired 9 days ago: within 30
        sealed = bundle(r, site, [records("results", [1, 2, 3])], created_at=later - 60)
        outcome = await r.desk.importer.import_bundle(sealed, now=later)
        assert outcome.stored["results"] == 3


async def test_a_bundle_signed_with_a_certificate_not_issued_to_the_device_is_refused(
    tmp_path: Path,
) -> None:
    """A certificate of this fleet's CA naming the device, whose serial the hub never
    recorded for it (made with the CA key outside enrollment, or a leftover of a
    device enrolled again under that id), is refused as a renewal would be."""
    with rig(tmp_path) as r:
        site = await enroll(r, "dev-sitekey01")
        other = pki.issue(
            r.ca_key,
            r.ca_cert,
            common_name=site.device_id,
            public_key=site.key.public_key(),
            days=30,
        )
        sealed = bundle(r, site, [records("results", [1])], cert=other.pem)
        with pytest.raises(BundleError, match=f"was not issued to {site.device_id}"):
            await r.desk.importer.import_bundle(sealed)
        assert await r.store.stream_marks([site.device_id]) == {}
        # Its own certificate is taken.
        outcome = await r.desk.importer.import_bundle(bundle(r, site, [records("results", [1])]))
        assert outcome.stored["results"] == 1
