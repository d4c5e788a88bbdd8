"""TLS contexts and certificate fingerprints shared by agent and hub.

Loading keys and certificates reads files, so callers on the event loop run these
functions in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Return a TLS 1.2+ client context that trusts only `ca` and presents `cert`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


def server_context(
    cert: Path, key: Path, *, client_ca: Path | None = None, client_cert_optional: bool = False
) -> ssl.SSLContext:
    """Return a TLS 1.2+ server context; with `client_ca`, client certificates are required
    (or, `client_cert_optional`, verified when presented: a client without one still
    connects, and the routes that need one refuse it)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_OPTIONAL if client_cert_optional else ssl.CERT_REQUIRED
    return context


def fingerprint(cert_pem: bytes) -> str:
    """Return ``sha256:<hex>`` of a PEM certificate's DER encoding."""
    # Imported here: the running agent never needs certificate parsing in memory.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()
