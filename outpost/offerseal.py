"""The seal on an offer of model releases: which releases, for which device, in what order.

Each release is signed once and the same for every device (`outpost/release.py`), so a
release alone cannot say whether it is still wanted. Whoever can publish on a device's
`down/models` (a broker that is not the hub's to trust) could replay an older offer and
take the device back to a version the hub has since replaced. The hub therefore seals
each offer it makes: it signs the device's id, a number that only grows across the
fleet (`seq`, taken from the database, so any replica's offers are ordered by when they
were read), and the sha256 of each release and shadow document in the offer, in order.
A device takes an offer only if its seal verifies, names it, matches the lists exactly,
and its number is not below the last it took (the same number again is the broker's
redelivery of the retained offer, and harmless).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from outpost import signing
from outpost.schema import INT64_MAX
from outpost.signing import Signed

_KEYS = frozenset({"device_id", "seq", "issued_at", "releases", "shadows"})


class SealError(ValueError):
    """An offer's seal is refused; the message says why."""


@dataclass(frozen=True)
class Seal:
    device_id: str
    seq: int
    issued_at: float


def digests(documents: Sequence[bytes]) -> list[bytes]:
    """The sha256 of each signed release document, in order: what a seal names."""
    return [hashlib.sha256(d).digest() for d in documents]


def sign(
    key: ed25519.Ed25519PrivateKey,
    device_id: str,
    seq: int,
    releases: Sequence[bytes],
    shadows: Sequence[bytes],
    issued_at: float,
) -> Signed:
    """Seal an offer of these release and shadow documents (each as signed) to one device."""
    body = {
        "device_id": device_id,
        "seq": seq,
        "issued_at": issued_at,
        "releases": digests(releases),
        "shadows": digests(shadows),
    }
    return signing.sign(key, body)


def verify(
    public: ed25519.Ed25519PublicKey,
    signed: Signed,
    device_id: str,
    releases: Sequence[bytes],
    shadows: Sequence[bytes],
) -> Seal:
    """The seal of this offer, or `SealError` saying why it is refused (checked in this
    order: signature, shape, addressee, the lists it names)."""
    try:
        body = signing.open_signed(public, signed, "offer seal")
    except signing.SignatureError as exc:
        raise SealError(str(exc)) from exc
    if set(body) != _KEYS:
        raise SealError("offer seal: signed document lacks " + ", ".join(sorted(_KEYS)))
    if body["device_id"] != device_id:
        raise SealError(f"offer seal: it is for {_quoted(body['device_id'])}, not this device")
    seq = body["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= INT64_MAX:
        raise SealError("offer seal: seq must be a positive 64-bit integer")
    issued_at = body["issued_at"]
    if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)):
        raise SealError("offer seal: issued_at must be a number")
    for field, documents in (("releases", releases), ("shadows", shadows)):
        if body[field] != digests(documents):
            raise SealError(f"offer seal: the {field} offered are not the ones it names")
    return Seal(device_id, seq, float(issued_at))


def _quoted(value: Any) -> str:
    return repr(value)[:80]
