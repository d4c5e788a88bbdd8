"""Courier bundles sealed: signed by their sender, encrypted to their recipient.

Every refusal is a `BundleError` whose message says why, and each refusal is shown
beside the same probe succeeding on the untouched bundle.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import struct
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from outpost.courier import content, sealing
from outpost.courier.sealing import BundleError, Header, Opened, SigningKey
from outpost.wire import Ack, Records

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

DEVICE_ID = "dev-courier01"
FLEET = "ab" * 32
CERT = b"-----BEGIN CERTIFICATE-----\nnot parsed here\n-----END CERTIFICATE-----\n"

DEVICE_KEY = ec.generate_private_key(ec.SECP256R1())  # signs its bundles; hub's answers to it
HUB_SIGNING = ed25519.Ed25519PrivateKey.generate()  # signs the hub's bundles
HUB_BUNDLE = ec.generate_private_key(ec.SECP256R1())  # the hub's bundle key: devices seal to it
OTHER_P256 = ec.generate_private_key(ec.SECP256R1())
OTHER_ED25519 = ed25519.Ed25519PrivateKey.generate()

# The info HKDF binds the key to, spelled out here on purpose: `encrypt` below is a
# second implementation of the format, checked against `seal` by a test.
INFO = b"outpost courier bundle v1"

# What a refusal of a changed bundle may say: each names a reason.
TAMPER_REASONS = re.compile(
    r"not an Outpost bundle|is cut short|outer header is malformed|bundle format \d+ is not"
    r"|key agreement is malformed|does not decrypt for"
)


@dataclasses.dataclass(frozen=True)
class Direction:
    """One way a bundle travels: who signs, who opens, what the header says."""

    name: str
    signer: SigningKey
    recipient: ec.EllipticCurvePrivateKey
    kind: str
    sender: str
    to: str
    cert: bytes

    def header(self, **changes: Any) -> Header:
        fields: dict[str, Any] = {
            "v": sealing.VERSION,
            "kind": self.kind,
            "fleet": FLEET,
            "sender": self.sender,
            "to": self.to,
            "id": "0f" * 16,
            "created_at": 1_700_000_000.5,
        }
        return Header(**(fields | changes))

    def seal(self, body: bytes, **changes: Any) -> bytes:
        return sealing.seal(
            self.header(**changes),
            body,
            signer=self.signer,
            recipient=self.recipient.public_key(),
            cert=self.cert,
        )

    @property
    def public(self) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
        return self.signer.public_key()


UP = Direction("device-to-hub", DEVICE_KEY, HUB_BUNDLE, "device", DEVICE_ID, "hub", CERT)
DOWN = Direction("hub-to-device", HUB_SIGNING, DEVICE_KEY, "hub", "hub", DEVICE_ID, b"")
DIRECTIONS = pytest.mark.parametrize("way", [UP, DOWN], ids=lambda d: d.name)

DEVICE_CONTENT = content.DeviceContent(
    batches=[
        Records(
            stream="results",
            from_seq=1,
            to_seq=3,
            seqs=[1, 3],
            ts=[1.0, 2.0],
            bodies=[msgspec.msgpack.encode({"label": "ok"}), b"\x80"],
        )
    ],
    aligned=["results"],
    store_id="store-1",
    agent_version="0.1.0",
    status={"uptime_s": 12.5},
)
HUB_CONTENT = content.HubContent(acks=[Ack(stream="results", hwm=3), Ack(stream="events", hwm=0)])
SMALL_BODY = b"a small body"


def refused(probe: Callable[[], object], where: str = "") -> str:
    """The message of the `BundleError` that `probe` raises; a failure for anything else."""
    try:
        result = probe()
    except BundleError as exc:
        message = str(exc)
        assert message.strip(), f"{where}: a BundleError without a message"
        return message
    except Exception as exc:
        pytest.fail(f"{where}: {exc!r} instead of a BundleError")
    pytest.fail(f"{where}: accepted, returning {result!r:.100}")


def flip(data: bytes, position: int, mask: int = 1) -> bytes:
    changed = bytearray(data)
    changed[position] ^= mask
    return bytes(changed)


def split(sealed: bytes) -> tuple[dict[str, Any], bytes]:
    """A bundle's clear outer header (decoded) and its ciphertext."""
    start = len(sealing.MAGIC) + 4
    (size,) = struct.unpack(">I", sealed[len(sealing.MAGIC) : start])
    outer: dict[str, Any] = msgspec.msgpack.decode(sealed[start : start + size])
    return outer, sealed[start + size :]


def join_outer(outer: dict[str, Any], ciphertext: bytes) -> bytes:
    outer_bytes = msgspec.msgpack.encode(outer)
    return sealing.MAGIC + struct.pack(">I", len(outer_bytes)) + outer_bytes + ciphertext


def encrypt(payload: bytes, recipient: ec.EllipticCurvePublicKey, to: str, v: int = 1) -> bytes:
    """A bundle around `payload` (the compressed inner), made as `seal` makes one: what
    anyone holding the recipient's public key can make, whatever the payload holds."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    epk = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    nonce = os.urandom(12)
    outer = {"v": v, "to": to, "epk": epk, "nonce": nonce}
    outer_bytes = msgspec.msgpack.encode(outer)
    key = HKDF(hashes.SHA256(), 32, salt=epk, info=INFO + to.encode()).derive(
        ephemeral.exchange(ec.ECDH(), recipient)
    )
    ciphertext = AESGCM(key).encrypt(nonce, payload, sealing.MAGIC + outer_bytes)
    return join_outer(outer, ciphertext)


def inner(opened: Opened, **changes: bytes) -> bytes:
    """The msgpack of an opened bundle's inner record, with `changes`."""
    fields = {
        "header": opened.signed[: len(opened.signed) - len(opened.body)],
        "body": opened.body,
        "sig": opened.signature,
        "cert": opened.cert,
    }
    return msgspec.msgpack.encode(fields | changes)


# ----------------------------------------------------------------------------- round trip


@DIRECTIONS
def test_a_sealed_bundle_opens_for_its_recipient_and_verifies(way: Direction) -> None:
    carried = DEVICE_CONTENT if way is UP else HUB_CONTENT
    body = content.encode(carried)
    sealed = way.seal(body)

    assert sealed.startswith(sealing.MAGIC)
    assert body not in sealed  # encrypted: the content is not in the clear
    assert sealing.addressee(sealed) == way.to
    opened = sealing.unseal(sealed, way.recipient)
    assert opened.header == way.header()
    assert opened.body == body
    assert opened.cert == way.cert
    assert opened.signed == msgspec.msgpack.encode(way.header()) + body
    sealing.verify(opened, way.public, "bundle")
    decoded = content.decode_device(body) if way is UP else content.decode_hub(body)
    assert decoded == carried


@DIRECTIONS
def test_each_seal_has_its_own_key_and_nonce(way: Direction) -> None:
    first, second = way.seal(SMALL_BODY), way.seal(SMALL_BODY)

    assert first != second
    assert split(first)[0]["epk"] != split(second)[0]["epk"]
    assert split(first)[0]["nonce"] != split(second)[0]["nonce"]
    assert sealing.unseal(first, way.recipient).body == SMALL_BODY
    assert sealing.unseal(second, way.recipient).body == SMALL_BODY


def test_the_content_is_compressed_before_it_is_encrypted() -> None:
    body = bytes(1 << 20)

    sealed = UP.seal(body)

    assert len(sealed) < 8 * 1024
    assert sealing.unseal(sealed, UP.recipient).body == body


def test_encrypt_here_makes_what_seal_makes() -> None:
    """The second implementation used to craft bundles below is faithful to `seal`."""
    opened = sealing.unseal(UP.seal(SMALL_BODY), UP.recipient)

    crafted = encrypt(zstd.compress(inner(opened)), HUB_BUNDLE.public_key(), "hub")

    again = sealing.unseal(crafted, HUB_BUNDLE)
    assert again == opened
    sealing.verify(again, UP.public, "crafted")


# ------------------------------------------------------------------------------ tampering


@DIRECTIONS
def test_a_flipped_bit_at_any_byte_is_refused(way: Direction) -> None:
    sealed = way.seal(SMALL_BODY)
    assert sealing.unseal(sealed, way.recipient).body == SMALL_BODY
    outer_end = len(sealed) - len(split(sealed)[1])

    for position in range(len(sealed)):
        tampered = flip(sealed, position, 1 << (position % 8))
        where = f"bit {position % 8} of byte {position} of {len(sealed)}"
        reason = refused(partial(sealing.unseal, tampered, way.recipient), where)
        assert TAMPER_REASONS.search(reason), f"{where}: {reason}"
        if position >= outer_end:  # the clear header is intact: whom it is for still reads
            assert sealing.addressee(tampered) == way.to


def test_a_bundle_cut_short_or_padded_is_refused() -> None:
    sealed = UP.seal(SMALL_BODY)
    assert sealing.unseal(sealed, UP.recipient).body == SMALL_BODY

    for length in range(len(sealed)):
        reason = refused(partial(sealing.unseal, sealed[:length], HUB_BUNDLE), f"{length} B")
        assert TAMPER_REASONS.search(reason), f"cut to {length}: {reason}"
    reason = refused(lambda: sealing.unseal(sealed + b"\0", HUB_BUNDLE))
    assert "does not decrypt for hub" in reason


def test_a_bundle_for_another_recipient_does_not_decrypt() -> None:
    sealed = UP.seal(SMALL_BODY)

    reason = refused(lambda: sealing.unseal(sealed, OTHER_P256))

    assert reason.startswith("the bundle does not decrypt for hub:")
    assert "made for another fleet or device" in reason
    assert sealing.unseal(sealed, HUB_BUNDLE).body == SMALL_BODY


def test_the_addressee_is_bound_to_the_key() -> None:
    """A clear header readdressed (and its key recomputed) still fails the tag."""
    sealed = DOWN.seal(SMALL_BODY)
    outer, ciphertext = split(sealed)

    readdressed = join_outer(outer | {"to": "dev-other"}, ciphertext)

    assert sealing.addressee(readdressed) == "dev-other"
    assert "does not decrypt for dev-other" in refused(
        lambda: sealing.unseal(readdressed, DEVICE_KEY)
    )
    assert sealing.unseal(join_outer(outer, ciphertext), DEVICE_KEY).body == SMALL_BODY


@pytest.mark.parametrize(
    ("way", "other"),
    [(UP, OTHER_P256), (DOWN, OTHER_ED25519), (UP, OTHER_ED25519), (DOWN, OTHER_P256)],
    ids=[
        "ecdsa-by-other-ecdsa",
        "ed25519-by-other-ed25519",
        "ecdsa-as-ed25519",
        "ed25519-as-ecdsa",
    ],
)
def test_a_bundle_signed_by_another_key_does_not_verify(way: Direction, other: SigningKey) -> None:
    opened = sealing.unseal(way.seal(SMALL_BODY), way.recipient)

    reason = refused(lambda: sealing.verify(opened, other.public_key(), "bundle of dev-x"))

    assert reason == "bundle of dev-x: the signature does not verify"
    sealing.verify(opened, way.public, "bundle of dev-x")


@DIRECTIONS
def test_a_bundle_signed_by_another_key_and_sealed_right_does_not_verify(
    way: Direction,
) -> None:
    """Encryption to a public key proves nothing of the sender: the signature does."""
    impostor = dataclasses.replace(
        way, signer=OTHER_ED25519 if way is DOWN else OTHER_P256, name="impostor"
    )
    opened = sealing.unseal(impostor.seal(SMALL_BODY), way.recipient)
    assert opened.header == way.header()

    assert refused(lambda: sealing.verify(opened, way.public, "hub bundle")).endswith(
        "the signature does not verify"
    )
    sealing.verify(opened, impostor.public, "hub bundle")


@pytest.mark.parametrize(
    "changes",
    [
        {"body": b"another body"},
        {"header": msgspec.msgpack.encode(UP.header(sender="dev-other"))},
    ],
    ids=["body", "header"],
)
def test_a_signed_bundle_changed_and_sealed_again_does_not_verify(
    changes: dict[str, bytes],
) -> None:
    opened = sealing.unseal(UP.seal(SMALL_BODY), UP.recipient)
    resealed = encrypt(zstd.compress(inner(opened, **changes)), HUB_BUNDLE.public_key(), "hub")

    changed = sealing.unseal(resealed, HUB_BUNDLE)

    assert changed != opened
    assert refused(lambda: sealing.verify(changed, UP.public, "bundle")).endswith(
        "the signature does not verify"
    )
    same = sealing.unseal(
        encrypt(zstd.compress(inner(opened)), HUB_BUNDLE.public_key(), "hub"), HUB_BUNDLE
    )
    sealing.verify(same, UP.public, "bundle")


# --------------------------------------------------------------------------- not a bundle


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not an Outpost bundle"),
        (random.Random(7).randbytes(300), "not an Outpost bundle"),
        (sealing.MAGIC[:-1], "not an Outpost bundle"),
        (b"PK\x03\x04" + bytes(200), "not an Outpost bundle"),
        (sealing.MAGIC, "the bundle is cut short"),
        (sealing.MAGIC + b"\0\0\0", "the bundle is cut short"),
        (sealing.MAGIC + b"\0\0\0\0", "outer header is malformed"),
        (sealing.MAGIC + b"\0\0\0\x05hello", "outer header is malformed"),
        (sealing.MAGIC + b"\xff\xff\xff\xff" + bytes(64), "outer header is malformed"),
        (join_outer({"v": 1, "to": "hub"}, b""), "outer header is malformed"),
        (join_outer({"v": "1", "to": "hub", "epk": b"", "nonce": b""}, b""), "malformed"),
    ],
    ids=[
        "empty",
        "random",
        "mark-cut",
        "zip",
        "mark-only",
        "length-cut",
        "empty-outer",
        "junk-outer",
        "huge-length",
        "outer-missing-fields",
        "outer-wrong-type",
    ],
)
def test_what_is_not_a_bundle_is_refused(data: bytes, words: str) -> None:
    assert words in refused(lambda: sealing.addressee(data))
    assert words in refused(lambda: sealing.unseal(data, HUB_BUNDLE))
    sealed = UP.seal(SMALL_BODY)
    assert sealing.addressee(sealed) == "hub"
    assert sealing.unseal(sealed, HUB_BUNDLE).body == SMALL_BODY


@pytest.mark.parametrize(
    ("epk", "nonce", "words"),
    [
        (b"", None, "key agreement is malformed"),
        (b"\x04" + bytes(64), None, "key agreement is malformed"),  # not on the curve
        (b"\x05" + bytes(64), None, "key agreement is malformed"),
        (None, b"", "does not decrypt for hub"),
        (None, bytes(4), "does not decrypt for hub"),
        (None, bytes(200), "does not decrypt for hub"),
    ],
    ids=["no-key", "off-curve", "bad-form", "no-nonce", "short-nonce", "long-nonce"],
)
def test_a_malformed_key_or_nonce_is_refused(
    epk: bytes | None, nonce: bytes | None, words: str
) -> None:
    outer, ciphertext = split(UP.seal(SMALL_BODY))
    changed = outer | ({"epk": epk} if epk is not None else {})
    changed |= {"nonce": nonce} if nonce is not None else {}

    assert words in refused(lambda: sealing.unseal(join_outer(changed, ciphertext), HUB_BUNDLE))
    assert sealing.unseal(join_outer(outer, ciphertext), HUB_BUNDLE).body == SMALL_BODY


@pytest.mark.parametrize("version", [0, 2, -1, 1 << 40])
def test_an_outer_header_of_another_version_is_refused(version: int) -> None:
    outer, ciphertext = split(UP.seal(SMALL_BODY))
    other = join_outer(outer | {"v": version}, ciphertext)

    expected = f"bundle format {version} is not one this version reads (1)"
    assert refused(lambda: sealing.addressee(other)) == expected
    assert refused(lambda: sealing.unseal(other, HUB_BUNDLE)) == expected
    same = join_outer(outer | {"v": 1}, ciphertext)
    assert sealing.addressee(same) == "hub"
    assert sealing.unseal(same, HUB_BUNDLE).body == SMALL_BODY


def test_a_bundle_of_another_version_properly_encrypted_is_refused() -> None:
    opened = sealing.unseal(UP.seal(SMALL_BODY), HUB_BUNDLE)
    payload = zstd.compress(inner(opened))

    other = encrypt(payload, HUB_BUNDLE.public_key(), "hub", v=2)

    assert "bundle format 2 is not one" in refused(lambda: sealing.unseal(other, HUB_BUNDLE))
    assert sealing.unseal(encrypt(payload, HUB_BUNDLE.public_key(), "hub"), HUB_BUNDLE) == opened


# ---------------------------------------------------------------------- content after it


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not zstd at all",
        zstd.compress(b"not msgpack \xc1"),
        zstd.compress(msgspec.msgpack.encode([1, 2, 3])),
        zstd.compress(msgspec.msgpack.encode({"header": b"", "body": b"", "sig": b""})),
        zstd.compress(msgspec.msgpack.encode({"header": "x", "body": b"", "sig": b""})),
        zstd.compress(
            msgspec.msgpack.encode(
                {"header": msgspec.msgpack.encode({"v": 1}), "body": b"", "sig": b""}
            )
        ),
    ],
    ids=[
        "empty",
        "not-zstd",
        "not-msgpack",
        "not-a-map",
        "header-empty",
        "header-wrong-type",
        "header-missing-fields",
    ],
)
def test_malformed_content_is_refused(payload: bytes) -> None:
    """Anyone with the recipient's public key can encrypt: what decrypts is checked too."""
    bundle = encrypt(payload, HUB_BUNDLE.public_key(), "hub")

    reason = refused(lambda: sealing.unseal(bundle, HUB_BUNDLE))

    assert re.search(r"content is malformed|content is over", reason), reason
    opened = sealing.unseal(UP.seal(SMALL_BODY), HUB_BUNDLE)
    good = encrypt(zstd.compress(inner(opened)), HUB_BUNDLE.public_key(), "hub")
    assert sealing.unseal(good, HUB_BUNDLE) == opened


def test_a_compressed_content_cut_short_is_called_malformed_not_oversized() -> None:
    opened = sealing.unseal(UP.seal(SMALL_BODY), HUB_BUNDLE)
    payload = zstd.compress(inner(opened))
    bundle = encrypt(payload[:-4], HUB_BUNDLE.public_key(), "hub")

    reason = refused(lambda: sealing.unseal(bundle, HUB_BUNDLE))

    assert "over" not in reason, reason
    assert re.search(r"malformed|cut short|truncated", reason), reason


# ---------------------------------------------------------------------------- the limit


def inner_size(way: Direction, body: bytes) -> int:
    """What `seal` holds in memory for `body`: the msgpack of its inner record."""
    opened = sealing.unseal(way.seal(body), way.recipient)
    return len(inner(opened))


def test_content_over_the_limit_is_not_sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    body = bytes(3000)
    size = inner_size(DOWN, body)  # Ed25519: a signature of fixed length, a fixed size

    monkeypatch.setattr(sealing, "MAX_CONTENT_BYTES", size - 1)
    reason = refused(lambda: DOWN.seal(body))
    assert f"the bundle would hold {size:,} bytes, over {size - 1:,}" in reason

    monkeypatch.setattr(sealing, "MAX_CONTENT_BYTES", size)
    assert sealing.unseal(DOWN.seal(body), DEVICE_KEY).body == body


def test_content_over_the_limit_is_not_unsealed(monkeypatch: pytest.MonkeyPatch) -> None:
    body = bytes(3000)
    sealed = DOWN.seal(body)
    size = inner_size(DOWN, body)

    monkeypatch.setattr(sealing, "MAX_CONTENT_BYTES", size - 1)
    reason = refused(lambda: sealing.unseal(sealed, DEVICE_KEY))
    assert reason.startswith(f"the bundle's content is over {size - 1:,} bytes")

    monkeypatch.setattr(sealing, "MAX_CONTENT_BYTES", size)
    assert sealing.unseal(sealed, DEVICE_KEY).body == body


def test_a_compression_bomb_is_refused_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealing, "MAX_CONTENT_BYTES", 1 << 20)
    bomb = zstd.compress(bytes(64 << 20))
    assert len(bomb) < 8 * 1024

    reason = refused(
        lambda: sealing.unseal(encrypt(bomb, HUB_BUNDLE.public_key(), "hub"), HUB_BUNDLE)
    )

    assert reason.startswith(f"the bundle's content is over {1 << 20:,} bytes")


def test_a_small_bomb_is_refused_before_it_is_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle key is public, and a bundle is decompressed before its signature can
    be checked: past `FREE_CONTENT_BYTES`, content may be at most `MAX_RATIO` times its
    compressed size, so a few KB cannot make the hub inflate a GiB (as they did)."""
    # A few KB buy the free size at most, whatever they hold, far below the 1 GiB cap.
    assert sealing.content_limit(32_970) == sealing.FREE_CONTENT_BYTES < sealing.MAX_CONTENT_BYTES
    monkeypatch.setattr(sealing, "FREE_CONTENT_BYTES", 1 << 20)
    bomb = zstd.compress(bytes(64 << 20))
    assert len(bomb) * sealing.MAX_RATIO < 64 << 20
    limit = max(1 << 20, len(bomb) * sealing.MAX_RATIO)

    reason = refused(
        lambda: sealing.unseal(encrypt(bomb, HUB_BUNDLE.public_key(), "hub"), HUB_BUNDLE)
    )

    assert reason.startswith(f"the bundle's content is over {limit:,} bytes, from {len(bomb):,}")
    assert "decompression bomb" in reason


def test_content_that_compresses_too_well_past_the_free_size_is_not_sealed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender learns it at once (export fewer records), not the recipient on import."""
    monkeypatch.setattr(sealing, "FREE_CONTENT_BYTES", 64 << 10)
    reason = refused(lambda: UP.seal(bytes(1 << 20)))
    assert "over 128 times as many" in reason
    assert "--max-records" in reason

    varied = os.urandom(1 << 20)  # what does not compress, past the free size, goes
    assert sealing.unseal(UP.seal(varied), HUB_BUNDLE).body == varied
    small = bytes(60 << 10)  # nor does the ratio count under it
    assert sealing.unseal(UP.seal(small), HUB_BUNDLE).body == small


# ------------------------------------------------------------------------------- keys


def test_a_public_key_round_trips_through_pem() -> None:
    pem = sealing.public_pem(HUB_BUNDLE.public_key())

    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert sealing.load_public_pem(pem, "the hub's key") == HUB_BUNDLE.public_key()


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        (b"", "the hub's key is not a PEM public key"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
        (
            OTHER_ED25519.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "the hub's key is not a P-256 public key",
        ),
        (
            sealing.public_pem(ec.generate_private_key(ec.SECP384R1()).public_key()),
            "the hub's key is not a P-256 public key",
        ),
    ],
    ids=["empty", "junk", "ed25519", "p384"],
)
def test_a_key_that_is_not_p256_is_refused(pem: bytes, words: str) -> None:
    assert words in refused(lambda: sealing.load_public_pem(pem, "the hub's key"))


# ------------------------------------------------------------- re-addressed and hostile


def test_a_bundle_signed_for_another_and_sealed_again_to_this_recipient_is_refused() -> None:
    """Whoever can open device A's hub bundle (A itself, compromised) can encrypt its
    signed content again to device B, whose public key is in its certificate: the
    signature still verifies, so the signed addressee must match the sealed one."""
    other, other_key = "dev-courier02", OTHER_P256  # device A
    for_a = sealing.seal(
        DOWN.header(to=other), SMALL_BODY, signer=HUB_SIGNING, recipient=other_key.public_key()
    )
    opened_by_a = sealing.unseal(for_a, other_key)
    to_b = encrypt(zstd.compress(inner(opened_by_a)), DEVICE_KEY.public_key(), DEVICE_ID)

    said = refused(lambda: sealing.unseal(to_b, DEVICE_KEY))

    assert said == (
        f"the bundle is sealed for {DEVICE_ID} but signed for {other}: it was taken from "
        "another's bundle"
    )
    # The control: the same content sealed for B itself opens and verifies.
    opened = sealing.unseal(DOWN.seal(SMALL_BODY), DEVICE_KEY)
    sealing.verify(opened, DOWN.public, "hub bundle")


DEEP = b"\x91" * 3000 + b"\xc0"  # [[[ ... nil ... ]]], 3,000 deep: skipping it recurses


def _with_deep_unknown_field(value: msgspec.Struct) -> bytes:
    encoded = msgspec.msgpack.encode(value)
    assert 0x80 <= encoded[0] <= 0x8E  # a fixmap: one more entry, an unknown one
    return bytes([encoded[0] + 1]) + encoded[1:] + msgspec.msgpack.encode("zz") + DEEP


def test_headers_nested_thousands_deep_are_refused_as_malformed() -> None:
    """An unknown field is skipped by recursion: nested deep enough it raised
    RecursionError (a traceback in both CLIs), in headers anyone can write."""
    outer = _with_deep_unknown_field(sealing._Outer(1, "hub", b"\x04" + b"\0" * 64, b"\0" * 12))
    deep_outer = sealing.MAGIC + struct.pack(">I", len(outer)) + outer + b"\0" * 32
    deep_header = encrypt(
        zstd.compress(
            msgspec.msgpack.encode(
                {"header": _with_deep_unknown_field(UP.header()), "body": b"", "sig": b"s"}
            )
        ),
        HUB_BUNDLE.public_key(),
        "hub",
    )

    assert "outer header is malformed" in refused(lambda: sealing.addressee(deep_outer))
    assert "content is malformed" in refused(lambda: sealing.unseal(deep_header, HUB_BUNDLE))
    assert sealing.unseal(UP.seal(SMALL_BODY), HUB_BUNDLE).body == SMALL_BODY  # the control


@pytest.mark.parametrize("when", [float("nan"), float("inf"), float("-inf")])
def test_a_bundle_whose_time_is_no_time_is_refused(when: float) -> None:
    """NaN passed both the hub's too-old and too-new checks."""
    said = refused(lambda: sealing.unseal(UP.seal(SMALL_BODY, created_at=when), HUB_BUNDLE))
    assert said.startswith("the bundle's time is not a time")
