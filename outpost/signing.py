"""Ed25519-signed documents: canonical msgpack bytes and their signature.

The hub signs policy and model releases this way; devices verify with the public key
they received at enrollment. The signed bytes travel as they are (never re-encoded), so
what is verified is exactly what was signed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

# RFC 8410: an Ed25519 public key's SubjectPublicKeyInfo is this DER header and the key.
_ED25519_SPKI_HEADER = bytes.fromhex("302a300506032b6570032100")
_PEM_BEGIN, _PEM_END = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"


class SignatureError(ValueError):
    """The signature does not verify, or the signed bytes are not a msgpack map."""


def load_public_pem(pem: bytes, where: str) -> ed25519.Ed25519PublicKey:
    """The Ed25519 public key in a PEM "PUBLIC KEY" block, as the hub writes its signing
    key; a ValueError naming `where` for anything else.

    Read here rather than by cryptography's `load_pem_public_key`: its serialization
    module brings every key type with it (SSH keys, RSA, DSA, EC, ML-DSA), about 1 MiB
    of a device agent's memory for the one key type the agent verifies with. The format
    is fixed (RFC 8410): 12 header bytes, then the 32 of the key, nothing to parse.
    """
    try:
        lines = pem.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        lines = []
    if len(lines) < 3 or lines[0].strip() != _PEM_BEGIN or lines[-1].strip() != _PEM_END:
        raise ValueError(f"{where}: not a PEM public key ({_PEM_BEGIN} ... {_PEM_END})")
    try:
        der = base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{where}: the PEM block is not valid base64: {exc}") from exc
    if len(der) != len(_ED25519_SPKI_HEADER) + 32 or not der.startswith(_ED25519_SPKI_HEADER):
        raise ValueError(f"{where}: not an Ed25519 public key")
    return ed25519.Ed25519PublicKey.from_public_bytes(der[len(_ED25519_SPKI_HEADER) :])


@dataclass(frozen=True)
class Signed:
    """What the hub publishes: the signed bytes and their signature."""

    document: bytes
    signature: bytes


def canonical(value: Any) -> bytes:
    """msgpack with map keys sorted at every level: equal content, equal bytes."""
    packed: bytes = msgspec.msgpack.encode(_sorted(value))
    return packed


def sign(key: ed25519.Ed25519PrivateKey, body: dict[str, Any]) -> Signed:
    document = canonical(body)
    return Signed(document, key.sign(document))


def open_signed(public: ed25519.Ed25519PublicKey, signed: Signed, what: str) -> dict[str, Any]:
    """The signed map, once its signature verifies; `SignatureError` otherwise."""
    try:
        public.verify(signed.signature, signed.document)
    except InvalidSignature as exc:
        raise SignatureError(f"{what}: signature does not verify against the hub's key") from exc
    try:
        body = msgspec.msgpack.decode(signed.document)
    except (ValueError, RecursionError) as exc:
        raise SignatureError(f"{what}: signed document is not msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise SignatureError(f"{what}: signed document is not a map")
    return body


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value
