"""The hub's key and certificate files, read so that a damaged one is named.

Cryptography's own words for a file it cannot read ("Unable to load PEM file. See
https://... MalformedFraming") name neither the file nor what to do about it; a hub that
stops with them leaves its operator to guess which of its key files went bad.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hub.fleet.pki import CaKey
from outpost import tls

RESTORE = "restore it from a backup of the data folder"


class KeyFileError(ValueError):
    """A key or certificate file of the hub's data folder cannot be used; the message
    names it."""


def private_key(path: Path) -> PrivateKeyTypes:
    """The private key in `path`; KeyFileError if it holds none."""
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: a key encrypted with a password, which the hub never writes.
        raise KeyFileError(
            f"{path} is damaged: it holds no readable private key ({_first_sentence(exc)}); "
            f"{RESTORE}"
        ) from exc


def ed25519_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = private_key(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key; {RESTORE}")
    return key


def ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = private_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path} is not an EC (P-256) key; {RESTORE}")
    return key


def certificate(path: Path) -> x509.Certificate:
    """The certificate in `path`; KeyFileError if it holds none."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise KeyFileError(
            f"{path} is damaged: it holds no readable certificate ({_first_sentence(exc)}); "
            f"{RESTORE}"
        ) from exc


def ca_fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of the certificate in `path` (the fleet CA's, which devices pin)."""
    return tls.fingerprint_of(certificate(path))


def fleet_ca(key_path: Path, cert_path: Path) -> tuple[CaKey, x509.Certificate]:
    """The fleet CA's key and certificate (blocking: reads files)."""
    return ec_key(key_path), certificate(cert_path)


def _first_sentence(exc: Exception) -> str:
    """Cryptography's reason without its FAQ link: the text up to the first period."""
    text = str(exc) or type(exc).__name__
    return text.split(". ", 1)[0].rstrip(".")
