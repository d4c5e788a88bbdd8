"""Certificate renewal: a device trades a certificate it holds, and a CSR signed with the
same key, for a new certificate, without a bootstrap token.

The CSR is the proof of possession: its signature verifies with the public key of the
presented certificate, so only the holder of the device key can ask. A certificate that
has expired still counts for `device_cert_grace_days` after the device's newest one
expired (a device offline for a long time); past that, or once the device is revoked,
only a new enrollment helps.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from hub.config import HubConfig
from hub.fleet import keyfiles, pki
from hub.paths import HubPaths
from hub.store import HubStore, IssuedCert

logger = logging.getLogger(__name__)

DAY_S = 86400.0


RENEW_SPACING_S = 3600.0  # at most one renewal per device per hour (less for short lives)


class RenewalRefusedError(ValueError):
    """A renewal was refused; the message says why and is safe to show the device."""

    def __init__(
        self, status: int, message: str, *, device_id: str = "", retry_after: float = 0.0
    ) -> None:
        super().__init__(message)
        # 403: not allowed; 422: the request itself is malformed; 429: not now (held)
        self.status = status
        self.device_id = device_id
        self.retry_after = retry_after  # 429: seconds until it may ask again


@dataclass(frozen=True)
class Renewed:
    """A renewed device certificate."""

    device_id: str
    certificate_pem: bytes
    serial: str  # hex
    previous_serial: str
    not_after: float


class Renewals:
    """Issues renewed certificates; holds the CA key in memory while the hub runs."""

    def __init__(
        self, ca_key: pki.CaKey, ca_cert: x509.Certificate, config: HubConfig, store: HubStore
    ) -> None:
        self._ca_key = ca_key
        self._ca_cert = ca_cert
        self._config = config
        self._store = store

    @classmethod
    def load(cls, paths: HubPaths, config: HubConfig, store: HubStore) -> Renewals:
        """Load the CA (reads files: run in a thread)."""
        key, cert = keyfiles.fleet_ca(paths.ca_key, paths.ca_cert)
        return cls(key, cert, config, store)

    async def renew(
        self, *, certificate_pem: bytes, csr_pem: bytes, now: float | None = None
    ) -> Renewed:
        """Check the presented certificate and the CSR, then issue a certificate for the
        same device and key; raise `RenewalRefusedError` saying what was wrong."""
        now = time.time() if now is None else now
        presented = self._issued_by_us(certificate_pem)
        device_id = _common_name(presented)
        try:
            public_key = pki.check_csr(csr_pem)
        except pki.CsrError as exc:
            raise RenewalRefusedError(422, str(exc), device_id=device_id) from exc
        if _spki(public_key) != _spki(presented.public_key()):
            raise RenewalRefusedError(
                403,
                "the CSR's key is not the certificate's key: sign the renewal request with "
                "the key the certificate was issued for",
                device_id=device_id,
            )
        serial = format(presented.serial_number, "x")
        state = await self._store.renewal_state(device_id, serial)
        if state.device is None:
            raise RenewalRefusedError(
                403, f"{device_id} is not a device of this hub", device_id=device_id
            )
        if state.device.revoked_at is not None:
            raise RenewalRefusedError(
                403,
                f"{device_id} was revoked on {_when(state.device.revoked_at)}; it cannot "
                "renew (a new enrollment with a new bootstrap token makes a new device)",
                device_id=device_id,
            )
        if state.presented is None:
            raise RenewalRefusedError(
                403,
                f"certificate serial {serial} was not issued to {device_id} by this hub",
                device_id=device_id,
            )
        if state.held_until is not None and state.held_until > now:
            # A new serial would not be in the CRL that holds the device off: it would
            # be back in at once, and flooding again.
            raise RenewalRefusedError(
                429,
                f"{device_id} is held off for flooding until {_when(state.held_until)}; "
                "it may renew after that",
                device_id=device_id,
                retry_after=state.held_until - now,
            )
        self._check_grace(presented, state.latest_not_after or 0.0, now, device_id)
        # Each renewal adds a serial to every CRL that lists the device later: a device
        # that renews in a loop (it is not trusted to behave) must not grow them without
        # bound. An agent renews at two thirds of a certificate's life.
        spacing = min(RENEW_SPACING_S, self._config.device_cert_days * DAY_S / 3)
        last = state.latest_renewal_at
        if last is not None and now - last < spacing:
            wait = last + spacing - now
            raise RenewalRefusedError(
                429,
                f"{device_id} renewed its certificate {now - last:.0f} s ago; it may renew "
                f"again in {wait:.0f} s",
                device_id=device_id,
                retry_after=wait,
            )

        issued = pki.issue(
            self._ca_key,
            self._ca_cert,
            common_name=device_id,
            public_key=public_key,
            days=self._config.device_cert_days,
        )
        record = IssuedCert(
            serial=format(issued.serial, "x"),
            device_id=device_id,
            not_before=issued.not_before.timestamp(),
            not_after=issued.not_after.timestamp(),
            issued_at=now,
            reason="renew",
        )
        if not await self._store.record_renewal(record):
            raise RenewalRefusedError(
                403, f"{device_id} was revoked or held off while renewing", device_id=device_id
            )
        logger.info(
            "renewed the certificate of %s (serial %s, valid until %s)",
            device_id,
            record.serial,
            _when(record.not_after),
        )
        return Renewed(device_id, issued.pem, record.serial, serial, record.not_after)

    def _issued_by_us(self, certificate_pem: bytes) -> x509.Certificate:
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError as exc:
            raise RenewalRefusedError(
                422, "the certificate is not a valid PEM certificate"
            ) from exc
        try:
            cert.verify_directly_issued_by(self._ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise RenewalRefusedError(
                403, "the certificate was not issued by this hub's fleet CA"
            ) from exc
        return cert

    def _check_grace(
        self, presented: x509.Certificate, latest_not_after: float, now: float, device_id: str
    ) -> None:
        """An expired certificate renews only within the grace period after the device's
        newest certificate expired."""
        if presented.not_valid_after_utc.timestamp() >= now:
            return
        grace_days = self._config.device_cert_grace_days
        deadline = latest_not_after + grace_days * DAY_S
        if now <= deadline:
            return
        raise RenewalRefusedError(
            403,
            f"the certificate of {device_id} expired on {_when(latest_not_after)}, more than "
            f"the grace period ago (device_cert_grace_days = {grace_days:g}, ended "
            f"{_when(deadline)}): enroll the device again with a new bootstrap token",
            device_id=device_id,
        )


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    if not isinstance(value, str) or not value:
        raise RenewalRefusedError(403, "the certificate names no device (no CN)")
    return value


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
