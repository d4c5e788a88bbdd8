"""Who signed a device's bundle, and whether the hub still takes their word: a
certificate of this fleet's CA naming the device, whose serial the hub issued to that
device, and not expired longer ago than a renewal would allow.

A certificate that has expired counts, as for a renewal (hub/fleet/certificates.py),
until `device_cert_grace_days` after the device's newest one expired: a device at a
site with no link renews by bundle, and its renewal may come late. Past that, only a
new enrollment helps. Times are the hub's: the bundle's `created_at` is the signer's
own claim, which the holder of a key could set to any date.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from hub.store import HubStore
from outpost.courier import utc
from outpost.courier.sealing import BundleError

DAY_S = 86400.0


class SignerCheck:
    def __init__(self, store: HubStore, ca_cert: x509.Certificate, grace_days: float) -> None:
        self._store = store
        self._ca = ca_cert
        self._grace_s = grace_days * DAY_S
        self._grace_days = grace_days

    def certificate(self, pem: bytes, device_id: str) -> x509.Certificate:
        """The bundle's certificate, if this fleet's CA issued it for `device_id`."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise BundleError(f"bundle of {device_id}: it carries no readable certificate") from exc
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise BundleError(
                f"bundle of {device_id}: its certificate was not issued by this fleet's CA"
            ) from exc
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if not names or names[0].value != device_id:
            raise BundleError(f"bundle signed as {device_id} carries another device's certificate")
        return cert

    async def check_current(self, cert: x509.Certificate, device_id: str, now: float) -> None:
        """Refuse a certificate the hub did not issue to this device, or one expired past
        the grace period (at the hub's `now`)."""
        serial = format(cert.serial_number, "x")
        state = await self._store.renewal_state(device_id, serial)
        if state.presented is None:
            raise BundleError(
                f"bundle of {device_id}: its certificate (serial {serial}) was not issued to "
                f"{device_id} by this hub"
            )
        expired_at = cert.not_valid_after_utc.timestamp()
        if expired_at >= now:
            return
        newest = max(state.latest_not_after or 0.0, expired_at)
        if now <= newest + self._grace_s:
            return
        raise BundleError(
            f"bundle of {device_id}: its certificate expired on {utc(expired_at)} and the "
            f"device's newest on {utc(newest)}, more than the grace period ago "
            f"(device_cert_grace_days = {self._grace_days:g}): enroll the device again with "
            "a new bootstrap token"
        )


def ec_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BundleError("the bundle's certificate does not hold an EC key")
    return key
