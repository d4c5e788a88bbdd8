"""What the CRL lists, read from the hub's store on both back-ends: every certificate of a
revoked or held device, until a month after it expired (then every broker refuses it for
its date alone), so the list does not grow for the CA's whole life."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.store import Device, HubStore, IssuedCert
from hub.store.certs import EXPIRED_LISTED_S
from tests.databases import BACKENDS, database

DAY = 86400.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def _device_with_old_certs(store: HubStore, device_id: str, tag: str, now: float) -> None:
    """Enrolled long ago; one certificate long expired, one lately, one current."""
    await store.add_device(
        Device(
            device_id, "generic", {}, False, None, None, None, None, {}, {},
            now - 400 * DAY, f"{tag}01", now - 400 * DAY, now - EXPIRED_LISTED_S - DAY,
        )
    )  # fmt: skip
    for serial, not_after in ((f"{tag}02", now - DAY), (f"{tag}03", now + 30 * DAY)):
        await store.record_throwaway_cert(
            IssuedCert(serial, device_id, not_after - 90 * DAY, not_after, now, "renew")
        )


async def test_long_expired_certificates_leave_the_crl(store: HubStore) -> None:
    now = time.time()
    await _device_with_old_certs(store, "dev-00000000000a", "aa", now)
    await _device_with_old_certs(store, "dev-00000000000b", "bb", now)
    await _device_with_old_certs(store, "dev-00000000000c", "cc", now)  # neither: unlisted
    await store.revoke_device("dev-00000000000a", now=now, by="t")
    assert await store.hold_device("dev-00000000000b", now=now, until=now + 3600)

    revoked = [c.serial for c in store.revoked_certs_sync(now)]
    held = [c.serial for c in store.held_certs_sync(now)]

    assert revoked == ["aa02", "aa03"]  # aa01 expired over a month ago
    assert held == ["bb02", "bb03"]
    # The same certificates a month earlier: every one still listed.
    earlier = now - EXPIRED_LISTED_S
    assert [c.serial for c in store.revoked_certs_sync(earlier)] == ["aa01", "aa02", "aa03"]
