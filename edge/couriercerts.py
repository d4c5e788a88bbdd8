"""A device certificate renewed by courier bundle: the CSR an export carries once the
certificate is in the last third of its life, and the renewed certificate a hub bundle
brings back, checked as the HTTPS renewal checks one.

Enrollment's x509 and JWT code is imported only when called: it costs the agent about
1.2 MiB resident from its start, for a courier export that may never come.
"""

from __future__ import annotations

import logging
import time

from cryptography.hazmat.primitives.asymmetric import ec

from edge import renewal
from edge.identity import DevicePaths, Identity
from outpost.courier import utc
from outpost.courier.sealing import BundleError

logger = logging.getLogger(__name__)


def renewal_csr(paths: DevicePaths, key: ec.EllipticCurvePrivateKey, device_id: str) -> str:
    """A CSR for the device key once the certificate is in the last third of its life
    (when the daemon would renew over HTTPS), else ""."""
    not_before, not_after = renewal.cert_window(paths, Identity.load(paths))
    if time.time() < renewal.renew_at(not_before, not_after):
        return ""
    from edge.enroll import make_csr

    return make_csr(key, device_id).decode()


def check(
    paths: DevicePaths, pem: bytes, key: ec.EllipticCurvePrivateKey, device_id: str
) -> tuple[float, float]:
    """A renewed certificate's validity window, once checked; `BundleError` if refused."""
    from edge.enroll import EnrollError, check_certificate

    try:
        cert = check_certificate(pem, paths.ca_cert.read_bytes(), key, device_id)
    except EnrollError as exc:
        raise BundleError(f"the renewed certificate in the hub's bundle is refused: {exc}") from exc
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def install(paths: DevicePaths, pem: bytes, window: tuple[float, float]) -> str:
    """Keep a checked certificate (the MQTT link's TLS context reloads it by itself),
    unless the one here lasts as long: renewed over HTTPS since the bundle was made, it
    would be swapped for one that expires sooner. What was done, for the operator."""
    current = renewal.cert_window(paths, Identity.load(paths))
    if current[1] >= window[1]:
        return f"kept the one here, valid until {utc(current[1])} (as long or longer)"
    renewal.save_certificate(paths, pem, window)
    logger.info("certificate renewed by bundle, valid until %s", utc(window[1]))
    return f"renewed, valid until {utc(window[1])}"
