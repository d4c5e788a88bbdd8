"""Turn a bootstrap token and a device's CSR into a device certificate and a registry row."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hub.config import HubConfig
from hub.courier.keys import ensure_bundle_key
from hub.fleet import bootstrap, keyfiles, pki
from hub.paths import HubPaths
from hub.store import Device, HubStore, IssuedCert, TokenRefusedError, courier
from outpost.courier.sealing import public_pem

logger = logging.getLogger(__name__)


class EnrollmentRefusedError(ValueError):
    """Enrollment was refused; the message says why and is safe to show the device."""


class BadTokenError(EnrollmentRefusedError):
    """The bootstrap token is invalid, expired or already used."""


class BadCsrError(EnrollmentRefusedError):
    """The certificate signing request is malformed or its key is weak."""


@dataclass(frozen=True)
class Enrolled:
    """What a newly enrolled device receives."""

    device_id: str
    certificate_pem: bytes
    ca_pem: bytes
    signing_public_pem: bytes
    bundle_public_pem: bytes  # courier bundles from the device are encrypted to it
    broker_url: str
    not_after: float
    name: str


class Enrollment:
    """Issues device identities; holds the CA key in memory while the hub runs."""

    def __init__(self, paths: HubPaths, config: HubConfig, store: HubStore) -> None:
        self._config = config
        self._store = store
        self._ca_key, self._ca_cert = keyfiles.fleet_ca(paths.ca_key, paths.ca_cert)
        self.ca_pem = paths.ca_cert.read_bytes()
        self._signing_public_pem = paths.signing_pub.read_bytes()
        # A data folder made before courier bundles gets its key now (if it can).
        has_key = ensure_bundle_key(paths) and paths.bundle_pub.exists()
        self._bundle_public_pem = paths.bundle_pub.read_bytes() if has_key else b""
        self._token_public = keyfiles.ed25519_key(paths.token_key).public_key()

    async def enroll(self, *, token: str, csr_pem: bytes, profile: str, name: str = "") -> Enrolled:
        """Check token and CSR, use the token up, issue the certificate, register the device."""
        try:
            claims = bootstrap.verify(token, self._token_public)
        except bootstrap.BootstrapTokenError as exc:
            raise BadTokenError(str(exc)) from exc
        try:
            public_key = pki.check_csr(csr_pem)
        except pki.CsrError as exc:
            raise BadCsrError(str(exc)) from exc
        now = time.time()
        key_sha256 = hashlib.sha256(
            public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
        try:
            consumed = await self._store.consume_enroll_token(
                claims.jti, now=now, key_sha256=key_sha256, device_id="dev-" + secrets.token_hex(6)
            )
        except TokenRefusedError as exc:
            raise BadTokenError(f"bootstrap token refused: {exc}") from exc
        device_id, labels = consumed.device_id, consumed.labels
        if consumed.again and consumed.certificate_pem is not None:
            kept = await self._answer_again(device_id, consumed.certificate_pem.encode(), now)
            if kept is not None:
                return kept
        issued = pki.issue(
            self._ca_key,
            self._ca_cert,
            common_name=device_id,
            public_key=public_key,
            days=self._config.device_cert_days,
        )
        cert = IssuedCert(
            serial=format(issued.serial, "x"),
            device_id=device_id,
            not_before=issued.not_before.timestamp(),
            not_after=issued.not_after.timestamp(),
            issued_at=now,
            reason="enroll",
        )
        existing = await self._store.device(device_id) if consumed.again else None
        if existing is not None:
            # The same device (its key) asking again: its first answer was lost, before
            # the hub kept it (a hub from before it did, or one stopped in between).
            if not await self._store.record_renewal(cert):
                raise BadTokenError("bootstrap token refused: its device was revoked")
            named = existing.name
            logger.info("enrolled %s again: its first answer was lost", device_id)
        else:
            named = await self._store.add_device(
                Device(
                    device_id=device_id,
                    profile=profile,
                    labels=labels,
                    online=False,
                    last_seen=None,
                    last_heartbeat=None,
                    heartbeat_interval=None,
                    agent_version=None,
                    capabilities={},
                    load={},
                    enrolled_at=now,
                    cert_serial=cert.serial,
                    cert_not_before=cert.not_before,
                    cert_not_after=cert.not_after,
                    name=name,
                )
            )
        await self._store.keep_enroll_answer(claims.jti, issued.pem.decode())
        if isinstance(public_key, ec.EllipticCurvePublicKey):  # hub bundles go to it
            await self._store.run(courier.remember_key, device_id, public_pem(public_key).decode())
        logger.info("enrolled %s as %s (profile %s, labels %s)", device_id, named, profile, labels)
        return self._enrolled(device_id, issued.pem, issued.not_after.timestamp(), named)

    async def _answer_again(
        self, device_id: str, certificate_pem: bytes, now: float
    ) -> Enrolled | None:
        """The answer a lost first one gave: the same certificate, not one more; None
        when it is no longer the device's (renewed or expired since, or the device
        removed), for a new one to be issued as before."""
        existing = await self._store.device(device_id)
        if existing is not None and existing.revoked_at is not None:
            raise BadTokenError("bootstrap token refused: its device was revoked")
        issued = x509.load_pem_x509_certificate(certificate_pem)
        serial = format(issued.serial_number, "x")
        not_after = issued.not_valid_after_utc.timestamp()
        if existing is None or existing.cert_serial != serial or not_after <= now:
            return None
        logger.info("enrolled %s again: its first answer was lost", device_id)
        return self._enrolled(device_id, certificate_pem, not_after, existing.name)

    def _enrolled(
        self, device_id: str, certificate_pem: bytes, not_after: float, name: str
    ) -> Enrolled:
        return Enrolled(
            device_id=device_id,
            certificate_pem=certificate_pem,
            ca_pem=self.ca_pem,
            signing_public_pem=self._signing_public_pem,
            bundle_public_pem=self._bundle_public_pem,
            broker_url=self._config.device_broker_url,
            not_after=not_after,
            name=name,
        )


def load_signing_key(paths: HubPaths) -> ed25519.Ed25519PrivateKey:
    """Load the key that signs policy and model manifests."""
    return keyfiles.ed25519_key(paths.signing_key)


def load_token_key(paths: HubPaths) -> ed25519.Ed25519PrivateKey:
    """Load the key that signs bootstrap tokens."""
    return keyfiles.ed25519_key(paths.token_key)
