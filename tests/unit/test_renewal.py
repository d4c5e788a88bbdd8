"""Unit tests of edge/renewal.py: when to renew, the renewer's loop, and the TLS context
that follows the certificate file."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from pathlib import Path

import pytest

from edge import renewal
from edge.identity import DevicePaths, Identity
from edge.renewal import CertRenewer, ClientTls, RenewalError, RenewalRefusedError, renew_at
from hub.fleet import pki
from outpost import files

DAY = 86400.0


def test_renewal_is_due_at_two_thirds_of_the_life() -> None:
    assert renew_at(0.0, 90 * DAY) == pytest.approx(60 * DAY)
    assert renew_at(1000.0, 1012.0) == pytest.approx(1008.0)
    assert renew_at(0.0, 100.0, fraction=0.5) == pytest.approx(50.0)


CA = pki.make_ca("Test CA")
KEY = pki.new_ec_key()


def reissue(paths: DevicePaths, *, days: float = 90) -> pki.Issued:
    """Give the device a new certificate of the test CA, for its key."""
    issued = pki.issue(*CA, common_name="dev-0123456789ab", public_key=KEY.public_key(), days=days)
    files.replace(paths.cert, issued.pem)
    return issued


@pytest.fixture
def device(tmp_path: Path) -> DevicePaths:
    """A device folder with a key, a certificate of a test CA and an identity."""
    paths = DevicePaths(tmp_path / "device")
    paths.identity_dir.mkdir(parents=True)
    files.write_new(paths.key, pki.key_pem(KEY))
    files.replace(paths.ca_cert, pki.cert_pem(CA[1]))
    issued = reissue(paths)
    Identity(
        device_id="dev-0123456789ab",
        broker_url="mqtts://127.0.0.1:1",
        hub_url="https://127.0.0.1:1",
        enrolled_at=time.time(),
        cert_not_after=issued.not_after.timestamp(),
    ).save(paths)
    return paths


def test_the_window_comes_from_the_identity_or_else_the_certificate(device: DevicePaths) -> None:
    identity = Identity.load(device)
    assert identity.cert_not_before is None  # enrolled before identity.json kept it

    not_before, not_after = renewal.cert_window(device, identity)

    assert not_after == pytest.approx(identity.cert_not_after, abs=1)
    assert not_after - not_before == pytest.approx(90 * DAY + 300, abs=2)  # backdated 5 min
    kept = dataclasses.replace(identity, cert_not_before=5.0, cert_not_after=7.0)
    assert renewal.cert_window(device, kept) == (5.0, 7.0)


def test_the_tls_context_is_rebuilt_only_when_the_certificate_changes(
    device: DevicePaths,
) -> None:
    client = ClientTls(device)
    first = client.current()
    assert client.current() is first

    reissue(device)

    second = client.current()
    assert second is not first
    assert client.current() is second


def test_an_unloadable_new_certificate_keeps_the_previous_context(
    device: DevicePaths, caplog: pytest.LogCaptureFixture
) -> None:
    client = ClientTls(device)
    first = client.current()
    other = pki.make_ca("Other CA")
    stranger = pki.new_ec_key()
    issued = pki.issue(*other, common_name="x", public_key=stranger.public_key(), days=1)
    files.replace(device.cert, issued.pem)  # a certificate for another key

    assert client.current() is first
    assert "kept the previous certificate" in caplog.text


def test_without_a_context_an_unloadable_certificate_is_an_error(device: DevicePaths) -> None:
    device.cert.write_bytes(b"garbage")
    with pytest.raises(OSError, match="PEM"):
        ClientTls(device).current()


# ---------------------------------------------------------------------------- the renewer


class FakeHub:
    """Stands in for `renewal.renew`: answers with a script of outcomes."""

    def __init__(self, paths: DevicePaths, outcomes: list[Exception | float]) -> None:
        self.paths = paths
        self.outcomes = outcomes
        self.calls = 0

    async def renew(self, paths: DevicePaths, identity: Identity) -> Identity:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        reissue(paths, days=outcome / DAY)
        renewed = dataclasses.replace(
            identity, cert_not_before=time.time() - 1, cert_not_after=time.time() + outcome
        )
        renewed.save(paths)
        return renewed


class Sleeps:
    """Records the renewer's sleeps and ends its loop after `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.waits: list[float] = []
        self.limit = limit

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.limit:
            raise asyncio.CancelledError


async def run_renewer(
    monkeypatch: pytest.MonkeyPatch, renewer: CertRenewer, hub: FakeHub, limit: int
) -> list[float]:
    sleeps = Sleeps(limit)
    monkeypatch.setattr(renewal, "renew", hub.renew)

    async def pause(event: asyncio.Event, seconds: float) -> bool:
        await sleeps(seconds)
        return False

    monkeypatch.setattr(renewal, "wait_event", pause)  # the renewer's only sleeps
    with pytest.raises(asyncio.CancelledError):
        await renewer.run()
    return sleeps.waits


def set_window(paths: DevicePaths, not_before: float, not_after: float) -> None:
    identity = Identity.load(paths)
    dataclasses.replace(identity, cert_not_before=not_before, cert_not_after=not_after).save(paths)


async def test_a_certificate_not_yet_due_is_left_alone_until_it_is(
    device: DevicePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    set_window(device, now - 10, now + 80)  # due in 50 s
    hub = FakeHub(device, [])

    waits = await run_renewer(monkeypatch, CertRenewer(device), hub, limit=1)

    assert hub.calls == 0
    assert waits[0] == pytest.approx(50, abs=1)


async def test_a_long_wait_is_cut_into_hours_to_follow_clock_changes(
    device: DevicePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = FakeHub(device, [])

    waits = await run_renewer(monkeypatch, CertRenewer(device), hub, limit=1)

    assert waits == [renewal.MAX_SLEEP_S]


async def test_an_expired_certificate_is_renewed_at_once_and_the_agent_told(
    device: DevicePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    set_window(device, now - 100, now - 10)
    told: list[Identity] = []

    async def on_renewed(identity: Identity) -> None:
        told.append(identity)

    hub = FakeHub(device, [900.0])

    waits = await run_renewer(monkeypatch, CertRenewer(device, on_renewed=on_renewed), hub, 1)

    assert hub.calls == 1
    assert len(told) == 1
    assert told[0].cert_not_after == pytest.approx(now + 900, abs=2)
    assert waits[0] == pytest.approx(600 - 1, abs=2)  # two thirds of the new one


async def test_network_failures_back_off_and_refusals_wait_long(
    device: DevicePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    set_window(device, now - 100, now + 1)
    hub = FakeHub(
        device,
        [
            RenewalError("cannot reach the hub"),
            RenewalError("cannot reach the hub"),
            RenewalRefusedError(403, "revoked"),
            RenewalError("cannot reach the hub"),
        ],
    )
    renewer = CertRenewer(device, retry_cap=5.0, refused_retry=1234.0)

    waits = await run_renewer(monkeypatch, renewer, hub, limit=4)

    assert hub.calls == 4
    assert 0 <= waits[0] <= 1.0
    assert 0 <= waits[1] <= 1.5
    assert waits[2] == 1234.0
    assert 0 <= waits[3] <= 1.5 * 1.5 * 1.5


async def test_the_hubs_retry_after_is_waited_out_and_a_failure_without_it_backs_off(
    device: DevicePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 (renewed within the hour, held off for flooding) says how long: asking
    sooner is refused again. The control: the same failure without it backs off as
    usual."""
    now = time.time()
    set_window(device, now - 100, now + 1)
    hub = FakeHub(
        device,
        [
            RenewalError("the hub could not renew the certificate (429)", retry_after_s=420.0),
            RenewalError("the hub could not renew the certificate (429)"),
        ],
    )
    renewer = CertRenewer(device, retry_cap=5.0, refused_retry=1234.0)

    waits = await run_renewer(monkeypatch, renewer, hub, limit=2)

    assert waits[0] == 420.0
    assert 0 <= waits[1] <= 1.5


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("999999", renewal.MAX_SLEEP_S),  # a hub's mistake does not park renewal for days
        ("soon", None),
        ("-5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date passed: at once
        ("\u00b2", None),  # a digit to isdigit(), not to float()
        ("1 Jan 2020 00:00:00 +99999999999999", None),  # OverflowError, not a dead renewer
        ("Mon, 01 Jan 2020 00:00:00 +9999", None),
    ],
)
def test_a_retry_after_header_is_read_as_seconds_or_a_date(
    header: str | None, seconds: float | None
) -> None:
    assert renewal.retry_after_s(header) == seconds


def test_a_retry_after_date_to_come_is_the_seconds_until_it() -> None:
    header = email.utils.formatdate(time.time() + 300, usegmt=True)
    wait = renewal.retry_after_s(header)
    assert wait is not None
    assert 290 <= wait <= 300


async def test_a_clock_far_ahead_does_not_renew_in_a_loop(
    device: DevicePaths, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    set_window(device, now - 100, now - 10)

    async def renew_into_the_past(paths: DevicePaths, identity: Identity) -> Identity:
        renewed = dataclasses.replace(identity, cert_not_before=now - 50, cert_not_after=now - 5)
        renewed.save(paths)
        return renewed

    hub = FakeHub(device, [])
    hub.renew = renew_into_the_past  # type: ignore[method-assign]
    renewer = CertRenewer(device, refused_retry=777.0)

    waits = await run_renewer(monkeypatch, renewer, hub, limit=1)

    assert waits == [777.0]
    assert "is this device's clock right?" in caplog.text
