"""A courier bundle sealed: signed by its sender, then encrypted to its recipient.

Sign, then encrypt, so that only the recipient learns what was signed and by whom:

- **Signature**: over `header || body`, by the sender's own key: a device's ECDSA P-256
  key (its mTLS key; the bundle carries its certificate, which the hub checks against
  its CA and registry), or the hub's Ed25519 signing key (which every device received
  at enrollment, as for policy and releases). The header names the fleet (its CA's
  fingerprint), the sender, the addressee, a random bundle id and when it was made.
- **Encryption**: ECIES on P-256 (SEC 1): an ephemeral ECDH key agreement with the
  recipient's P-256 public key (the hub's bundle key, published at enrollment, or the
  device's certificate key), HKDF-SHA256 over the shared secret into an AES-256-GCM key,
  one random 96-bit nonce; the clear outer header (version, addressee, ephemeral key)
  is the associated data, so changing any byte of the file fails the tag.
- **Compression**: zstd of the signed content before encryption (ciphertext does not
  compress).

Everything is held in memory: a bundle is bounded by `MAX_CONTENT_BYTES`.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from msgspec import Meta

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

MAGIC: Final = b"OUTPOST-BUNDLE/1\n"
VERSION: Final = 1
MAX_CONTENT_BYTES: Final = 1 << 30  # decompressed; AES-GCM in one call takes < 2 GiB
# A bundle is decrypted and decompressed before its signature can be checked, and the
# hub's bundle key is public: a few KB of zstd could make the hub inflate 1 GiB. Its
# content may be up to `FREE_CONTENT_BYTES` whatever it compresses to (100,000 records,
# an export's default, hold 20-100 MiB), and past that at most `MAX_RATIO` times its
# compressed size (records compress 4-30 times; a bundle that would need more is
# refused when it is made, saying to export fewer records).
FREE_CONTENT_BYTES: Final = 128 << 20
MAX_RATIO: Final = 128
ZSTD_LEVEL: Final = 3
_INFO: Final = b"outpost courier bundle v1"
ADDRESSEE: Final = "^(hub|dev-[0-9a-z-]{1,60})$"

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class BundleError(ValueError):
    """A bundle that cannot be opened or trusted; the message says why, for a person."""


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Who sent a bundle, to whom, when, and in which fleet (signed)."""

    v: int
    kind: str  # "device" (device -> hub) or "hub" (hub -> device)
    fleet: str  # the fleet CA's SHA-256 fingerprint, hex
    sender: str  # a device id, or "hub"
    to: str  # "hub", or a device id
    id: str  # random, hex: a replay is recognised by it
    created_at: float


class _Outer(msgspec.Struct, frozen=True):
    v: int
    to: Annotated[str, Meta(pattern=ADDRESSEE)]  # shown in messages: checked before trusted
    epk: bytes  # the ephemeral public key, X9.62 uncompressed point
    nonce: bytes


class _Inner(msgspec.Struct, frozen=True):
    header: bytes  # msgpack of Header, as signed
    body: bytes  # msgpack of the content, as signed
    sig: bytes
    cert: bytes = b""  # a device's certificate (PEM), whose key signed


@dataclass(frozen=True)
class Opened:
    """A decrypted bundle, not yet trusted: `verify` checks its signature."""

    header: Header
    body: bytes
    cert: bytes  # the signing device's certificate (PEM); b"" for a hub's bundle
    header_bytes: bytes  # the header as signed
    signature: bytes

    @property
    def signed(self) -> bytes:
        """header || body, as signed (a copy: `verify` does without it for ECDSA)."""
        return self.header_bytes + self.body


def seal(
    header: Header,
    body: bytes,
    *,
    signer: SigningKey,
    recipient: ec.EllipticCurvePublicKey,
    cert: bytes = b"",
) -> bytes:
    """The bundle's bytes: `body` signed with `header` by `signer`, for `recipient`."""
    header_bytes = msgspec.msgpack.encode(header)
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        sig = signer.sign(header_bytes + body)  # the hub's bundles: small
    else:  # a device's: hashed in place, not copied (it may be large, the device small)
        sig = signer.sign(_digest(header_bytes, body), ec.ECDSA(Prehashed(hashes.SHA256())))
    inner = msgspec.msgpack.encode(_Inner(header_bytes, body, sig, cert))
    if len(inner) > MAX_CONTENT_BYTES:
        raise BundleError(
            f"the bundle would hold {len(inner):,} bytes, over {MAX_CONTENT_BYTES:,}: "
            "export fewer records per bundle (--max-records)"
        )
    compressed = zstd.compress(inner, ZSTD_LEVEL)
    if len(inner) > content_limit(len(compressed)):
        raise BundleError(
            f"the bundle would hold {len(inner):,} bytes that compress to {len(compressed):,}, "
            f"over {MAX_RATIO} times as many (its recipient would refuse it, as it refuses "
            "a decompression bomb): export fewer records per bundle (--max-records)"
        )
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    epk = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    outer = _Outer(VERSION, header.to, epk, os.urandom(12))
    outer_bytes = msgspec.msgpack.encode(outer)
    key = _key(ephemeral.exchange(ec.ECDH(), recipient), epk, header.to)
    ciphertext = AESGCM(key).encrypt(outer.nonce, compressed, MAGIC + outer_bytes)
    return MAGIC + struct.pack(">I", len(outer_bytes)) + outer_bytes + ciphertext


def addressee(sealed: bytes) -> str:
    """Whom a bundle is for, read from its clear header (not yet trusted)."""
    return _outer(sealed)[0].to


def unseal(sealed: bytes, key: ec.EllipticCurvePrivateKey) -> Opened:
    """Decrypt a bundle with the recipient's key; its signature is checked by `verify`."""
    outer, outer_bytes, ciphertext = _outer(sealed)
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), outer.epk)
        shared = key.exchange(ec.ECDH(), ephemeral)
    except ValueError as exc:
        raise BundleError(f"the bundle's key agreement is malformed: {exc}") from exc
    try:
        compressed = AESGCM(_key(shared, outer.epk, outer.to)).decrypt(
            outer.nonce, ciphertext, MAGIC + outer_bytes
        )
    except (InvalidTag, ValueError) as exc:
        raise BundleError(
            f"the bundle does not decrypt for {outer.to}: it was changed after it was made, "
            "or it was made for another fleet or device"
        ) from exc
    try:
        inner_bytes = _decompress(compressed)
        inner = msgspec.msgpack.decode(inner_bytes, type=_Inner)
        header = msgspec.msgpack.decode(inner.header, type=Header)
    except (msgspec.DecodeError, msgspec.ValidationError, zstd.ZstdError, RecursionError) as exc:
        raise BundleError(f"the bundle's content is malformed: {exc}") from exc
    if not math.isfinite(header.created_at):  # NaN passes every comparison of age
        raise BundleError(f"the bundle's time is not a time: {header.created_at}")
    if header.to != outer.to:
        # The signed content of a bundle for someone else, encrypted again to this
        # recipient (by whoever could decrypt it): its marks and tasks are not ours.
        raise BundleError(
            f"the bundle is sealed for {outer.to} but signed for {header.to}: it was "
            "taken from another's bundle"
        )
    # The caller picks the key to verify with from the header (and certificate).
    return Opened(header, inner.body, inner.cert, inner.header, inner.sig)


def verify(opened: Opened, public: VerifyKey, what: str) -> None:
    """Check an unsealed bundle's signature against its sender's key."""
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(opened.signature, opened.signed)
        else:
            digest = _digest(opened.header_bytes, opened.body)
            public.verify(opened.signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature as exc:
        raise BundleError(f"{what}: the signature does not verify") from exc


def _outer(sealed: bytes) -> tuple[_Outer, bytes, bytes]:
    if not sealed.startswith(MAGIC):
        raise BundleError("not an Outpost bundle (its first bytes are not the bundle's mark)")
    start = len(MAGIC) + 4
    if len(sealed) < start:
        raise BundleError("the bundle is cut short")
    (size,) = struct.unpack(">I", sealed[len(MAGIC) : start])
    outer_bytes = sealed[start : start + size]
    try:
        outer = msgspec.msgpack.decode(outer_bytes, type=_Outer)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        # RecursionError: an unknown field nested thousands deep, skipped by recursion.
        raise BundleError(f"the bundle's outer header is malformed: {exc}") from exc
    if outer.v != VERSION:
        raise BundleError(f"bundle format {outer.v} is not one this version reads ({VERSION})")
    return outer, outer_bytes, sealed[start + size :]


def _digest(header_bytes: bytes, body: bytes) -> bytes:
    digest = hashlib.sha256(header_bytes)
    digest.update(body)
    return digest.digest()


def _key(shared: bytes, epk: bytes, to: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=epk, info=_INFO + to.encode()).derive(shared)


def content_limit(compressed: int) -> int:
    """The most content a bundle of `compressed` bytes (zstd) may decompress to."""
    return min(MAX_CONTENT_BYTES, max(FREE_CONTENT_BYTES, MAX_RATIO * compressed))


def _decompress(data: bytes) -> bytes:
    """`data` decompressed, stopping at `content_limit` (nothing past it is made)."""
    limit = content_limit(len(data))
    decompressor = zstd.ZstdDecompressor()
    out = decompressor.decompress(data, max_length=limit)
    if not decompressor.eof:
        if len(out) >= limit:
            raise BundleError(
                f"the bundle's content is over {limit:,} bytes, from {len(data):,} compressed "
                f"(at most {FREE_CONTENT_BYTES:,}, or {MAX_RATIO} times the compressed size, "
                f"up to {MAX_CONTENT_BYTES:,}): refused unread, as a decompression bomb"
            )
        raise BundleError("the bundle's content is malformed: its compressed data is cut short")
    return out


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_pem(data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BundleError(f"{what} is not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BundleError(f"{what} is not a P-256 public key")
    return key


def dump(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)
