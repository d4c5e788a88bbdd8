"""Unit tests of hub/fleet/revocation.py's CRL: what it lists, who signed it, how long it holds."""

from __future__ import annotations

import datetime as dt
import time

from cryptography import x509

from hub.fleet import pki
from hub.fleet.revocation import build_crl
from hub.store import RevokedCert

CA = pki.make_ca("Test Fleet CA")


def test_the_crl_lists_every_revoked_serial_with_its_date() -> None:
    ca_key, ca_cert = CA
    revoked_at = 1_800_000_000.0
    revoked = [RevokedCert("ab12", revoked_at), RevokedCert("5117fef307cf33481e", revoked_at)]

    crl = x509.load_pem_x509_crl(build_crl(ca_key, ca_cert, revoked, now=time.time()))

    assert sorted(r.serial_number for r in crl) == sorted([0xAB12, 0x5117FEF307CF33481E])
    entry = crl.get_revoked_certificate_by_serial_number(0xAB12)
    assert entry is not None
    assert entry.revocation_date_utc == dt.datetime.fromtimestamp(revoked_at, dt.UTC)
    assert crl.get_revoked_certificate_by_serial_number(0xCD34) is None


def test_the_crl_is_signed_by_the_fleet_ca_and_valid_as_long_as_it() -> None:
    ca_key, ca_cert = CA
    now = time.time()

    crl = x509.load_pem_x509_crl(build_crl(ca_key, ca_cert, [], now=now))

    assert crl.is_signature_valid(ca_key.public_key())
    assert crl.issuer == ca_cert.subject
    assert crl.last_update_utc.timestamp() <= now  # valid at once, despite small skew
    assert crl.next_update_utc == ca_cert.not_valid_after_utc
    assert len(crl) == 0  # an empty list is still a valid one: Mosquitto needs the file
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == int(now * 1000)


def test_a_crl_of_another_ca_does_not_verify() -> None:
    other_key, other_cert = pki.make_ca("Other CA")
    crl = x509.load_pem_x509_crl(build_crl(other_key, other_cert, [], now=time.time()))
    assert not crl.is_signature_valid(CA[0].public_key())


def test_a_held_certificate_is_listed_on_hold_and_a_revoked_one_without_a_reason() -> None:
    ca_key, ca_cert = CA
    listed = [RevokedCert("aa", 1_800_000_000.0), RevokedCert("bb", 1_800_000_100.0, held=True)]

    crl = x509.load_pem_x509_crl(build_crl(ca_key, ca_cert, listed, now=time.time()))

    held = crl.get_revoked_certificate_by_serial_number(0xBB)
    assert held is not None
    reason = held.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason == x509.ReasonFlags.certificate_hold
    revoked = crl.get_revoked_certificate_by_serial_number(0xAA)
    assert revoked is not None
    assert not list(revoked.extensions)
