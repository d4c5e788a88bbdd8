"""Ed25519-signed documents: canonical msgpack bytes and their signature.

The hub signs policy and model releases this way; devices verify with the public key
they received at enrollment. The signed bytes travel as they are (never re-encoded), so
what is verified is exactly what was signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519


class SignatureError(ValueError):
    """The signature does not verify, or the signed bytes are not a msgpack map."""


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
