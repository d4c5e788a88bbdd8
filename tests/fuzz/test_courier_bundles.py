"""Fuzz the courier bundle reader: part files from a stick or an upload, then the sealed
bundle they carry.

Each property feeds arbitrary or mutated input and holds the reader to one contract:
it accepts, or it raises `BundleError` with a message saying why, within a time bound.
Anything else (a `TypeError`, a `MemoryError`, a hang) is a bug. And a changed input is
never accepted: a mutated part or bundle is refused, unless the mutation was a no-op (its
bytes as they were; for a part, at most its header re-encoded to the same values).
"""

from __future__ import annotations

import hashlib
import random
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import example, given
from hypothesis import strategies as st

from outpost.courier import parts, sealing
from outpost.courier.parts import MARK, MIN_PART_BYTES, SUFFIX
from outpost.courier.sealing import BundleError, Header
from tests.fuzz.conftest import count
from tests.unit.test_courier_sealing import encrypt, inner

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

# Reading a few hundred kilobytes that takes longer than this is hanging, not working.
TIME_BOUND_S = 2.0
# The content limit while fuzzing: a decompression bomb is refused at it, not built.
LIMIT = 1 << 20
# A part header's `count`, at most (parts.MAX_PARTS; a larger one is malformed).
MAX_FUZZ_COUNT = 100_000

T = TypeVar("T")

DEVICE_KEY = ec.generate_private_key(ec.SECP256R1())
HUB_SIGNING = ed25519.Ed25519PrivateKey.generate()
HUB_BUNDLE = ec.generate_private_key(ec.SECP256R1())
DEVICE_ID = "dev-fuzz0001"


def header(kind: str, sender: str, to: str) -> Header:
    return Header(
        v=sealing.VERSION,
        kind=kind,
        fleet="cd" * 32,
        sender=sender,
        to=to,
        id="5a" * 16,
        created_at=1.7e9,
    )


# (sealed, recipient's key, signer's public key, addressee): each direction, and a bundle
# of several parts. Made once: the properties mutate their bytes.
UP = sealing.seal(
    header("device", DEVICE_ID, "hub"),
    b"records",
    signer=DEVICE_KEY,
    recipient=HUB_BUNDLE.public_key(),
    cert=b"-----BEGIN CERTIFICATE-----\n",
)
DOWN = sealing.seal(
    header("hub", "hub", DEVICE_ID),
    b"acks",
    signer=HUB_SIGNING,
    recipient=DEVICE_KEY.public_key(),
)
BUNDLES: list[tuple[bytes, ec.EllipticCurvePrivateKey, Any, str]] = [
    (UP, HUB_BUNDLE, DEVICE_KEY.public_key(), "hub"),
    (DOWN, DEVICE_KEY, HUB_SIGNING.public_key(), DEVICE_ID),
]
# A bundle of three parts at the smallest part size: its content does not compress.
LARGE = sealing.seal(
    header("device", DEVICE_ID, "hub"),
    random.Random(5).randbytes(2 * MIN_PART_BYTES),
    signer=DEVICE_KEY,
    recipient=HUB_BUNDLE.public_key(),
)


def part_files(sealed: bytes, stem: str) -> list[tuple[str, bytes]]:
    with tempfile.TemporaryDirectory() as folder:
        paths = parts.write_parts(sealed, Path(folder), stem, MIN_PART_BYTES)
        return [(p.name, p.read_bytes()) for p in paths]


PART_SETS: list[tuple[bytes, list[tuple[str, bytes]]]] = [
    (UP, part_files(UP, "up")),
    (DOWN, part_files(DOWN, "down")),
    (LARGE, part_files(LARGE, "large")),
]
assert len(PART_SETS[2][1]) == 3, "the large bundle should need three parts"


def attempt(parse: Callable[[], T]) -> tuple[T | None, BundleError | None]:
    """Run `parse`: its result, or its `BundleError` (with a message); bound its time.
    Any other exception propagates: a failure."""
    started = time.monotonic()
    result: T | None = None
    refusal: BundleError | None = None
    try:
        result = parse()
    except BundleError as exc:
        refusal = exc
    assert time.monotonic() - started < TIME_BOUND_S, "the reader took too long"
    assert refusal is None or str(refusal).strip(), f"{refusal!r} without a message"
    return result, refusal


def refuses_only(parse: Callable[[], T]) -> T | None:
    """Run `parse`; allow success or `BundleError` with a message; bound its time."""
    return attempt(parse)[0]


def refuses(parse: Callable[[], object], why: str) -> None:
    """Run `parse`: it must raise `BundleError`, with a message, in time."""
    result, refusal = attempt(parse)
    assert refusal is not None, f"{why}: accepted, returning {result!r:.200}"


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, byte) edits: 0 flip, 1 insert, 2 delete, 3 truncate."""
    buffer = bytearray(data)
    for op, position, value in edits:
        if not buffer:
            break
        where = position % len(buffer)
        if op == 0:
            buffer[where] ^= value or 1
        elif op == 1:
            buffer.insert(where, value)
        elif op == 2:
            del buffer[where]
        else:
            del buffer[where:]
    return bytes(buffer)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 18), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)

# ------------------------------------------------------------------------------ parts

INTS = st.integers(-(2**63), 2**64 - 1)
HEXES = st.text("0123456789abcdef", min_size=64, max_size=64)
PART_FIELDS = ["bundle", "index", "count", "size", "sha256", "total"]


@st.composite
def part_bytes(draw: st.DrawFn) -> bytes:
    """Part files right but for a few of their mark, length, header fields and end."""
    piece = draw(st.binary(max_size=300))
    digest = hashlib.sha256(piece).hexdigest()
    wrong = draw(st.sets(st.sampled_from(["mark", "length", "end", *PART_FIELDS]), max_size=3))
    other = {
        "bundle": HEXES | st.text(max_size=8),
        "index": st.integers(-2, 4) | INTS,
        "count": st.integers(-2, 4) | st.integers(-(2**63), MAX_FUZZ_COUNT),
        "size": st.integers(-20, 400) | INTS,
        "sha256": HEXES,
        "total": INTS,
    }
    fields: dict[str, Any] = {
        "bundle": digest,
        "index": 1,
        "count": 1,
        "size": len(piece),
        "sha256": digest,
        "total": len(piece),
    }
    for name in PART_FIELDS:
        if name in wrong:
            fields[name] = draw(
                other[name] | st.none() | st.binary(max_size=8) | st.floats() | st.text(max_size=4)
            )
    if draw(st.booleans()):
        fields[draw(st.text(max_size=6))] = draw(INTS | st.text(max_size=4))
    header_bytes = msgspec.msgpack.encode(fields)
    length = draw(st.integers(0, 2**32 - 1)) if "length" in wrong else len(header_bytes)
    mark = draw(st.binary(max_size=16)) if "mark" in wrong else MARK
    end = draw(st.binary(max_size=20)) if "end" in wrong else parts.END
    return mark + struct.pack(">I", length) + header_bytes + piece + end


ARBITRARY_PARTS = (
    st.binary(max_size=2048) | st.binary(max_size=512).map(MARK.__add__) | part_bytes()
)


def read_in_folder(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]] | None:
    """`assemble` of `files` written to a folder, each also read alone; None if refused."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, raw in files:
            (root / name).write_bytes(raw)
        for name, _ in files:
            part = refuses_only(partial(parts.read_part, root / name))
            if part is not None:
                assert len(part.data) == part.header.size
                assert hashlib.sha256(part.data).hexdigest() == part.header.sha256
        bundles = refuses_only(lambda: parts.assemble([root]))
    if bundles is not None:
        for _, sealed in bundles:  # whatever is accepted is the bundle its parts name
            assert hashlib.sha256(sealed).hexdigest() in {
                parts.parts_of(raw, name)[0].header.bundle for name, raw in files
            }
    return bundles


@given(st.lists(ARBITRARY_PARTS, min_size=1, max_size=3))
def test_parts_reader_arbitrary_bytes(raws: list[bytes]) -> None:
    count("courier.parts.read_part/assemble")
    read_in_folder([(f"b.{n:03d}-of-003{SUFFIX}", raw) for n, raw in enumerate(raws, 1)])
    count("courier.parts.parts_of/join")
    found = refuses_only(lambda: parts.parts_of(b"".join(raws), "the upload"))
    if found is not None:
        refuses_only(lambda: parts.join(found))


@given(st.sampled_from(PART_SETS), st.integers(0, 2), EDITS)
def test_parts_reader_mutated_parts(
    part_set: tuple[bytes, list[tuple[str, bytes]]], which: int, edits: list[tuple[int, int, int]]
) -> None:
    count("courier.parts.read_part/assemble")
    sealed, files = part_set
    name, original = files[which % len(files)]
    changed = mutate(original, edits)
    mutated = [(n, changed if n == name else raw) for n, raw in files]

    bundles = read_in_folder(mutated)
    if changed == original:
        assert bundles == [(files[0][0], sealed)]
    elif bundles is not None:
        # Only a change that means nothing passes: the same header (re-encoded) and bytes.
        assert bundles == [(files[0][0], sealed)], f"a changed part of {name} made another bundle"
        assert meaning(changed, name) == meaning(original, name), f"a changed {name} was accepted"
    # A part read alone checks only its own bytes; those must be the ones written.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(changed)
        part = refuses_only(lambda: parts.read_part(path))
    if part is not None:
        assert part.data == parts.parts_of(original, name)[0].data

    count("courier.parts.parts_of/join")
    blob = b"".join(raw for _, raw in mutated)
    found = refuses_only(lambda: parts.parts_of(blob, "the upload"))
    joined = refuses_only(lambda: parts.join(found)) if found is not None else None
    if changed == original:
        assert joined == [("the upload (part 1 in it)", sealed)]
    elif joined is not None:
        assert joined == [("the upload (part 1 in it)", sealed)], "another bundle was made"
        assert meaning(changed, name) == meaning(original, name), f"a changed {name} was accepted"


def meaning(raw: bytes, name: str) -> tuple[parts.PartHeader, bytes]:
    """What the reader takes from a part file: its header and its bytes."""
    part = parts.parts_of(raw, name)[0]
    return part.header, part.data


# ----------------------------------------------------------------------------- sealed


def outer_of(sealed: bytes) -> tuple[dict[str, Any], int]:
    """A bundle's clear outer header, decoded, and where it ends."""
    start = len(sealing.MAGIC) + 4
    (size,) = struct.unpack(">I", sealed[len(sealing.MAGIC) : start])
    decoded: dict[str, Any] = msgspec.msgpack.decode(sealed[start : start + size])
    return decoded, start + size


REAL_OUTER, _ = outer_of(UP)


@st.composite
def bundle_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a bundle's mark and outer header with fields right or not."""
    shape = draw(st.integers(0, 2))
    if shape == 0:
        return draw(st.binary(max_size=1024))
    if shape == 1:
        return sealing.MAGIC + draw(st.binary(max_size=512))
    outer: dict[str, Any] = {
        "v": draw(st.just(1) | INTS),
        "to": draw(st.just("hub") | st.text(max_size=12)),
        "epk": draw(st.just(REAL_OUTER["epk"]) | st.binary(max_size=70)),
        "nonce": draw(st.just(REAL_OUTER["nonce"]) | st.binary(max_size=20)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(outer)), max_size=2)):
        outer[name] = draw(st.none() | INTS | st.text(max_size=4) | st.binary(max_size=4))
    outer_bytes = msgspec.msgpack.encode(outer)
    length = draw(st.just(len(outer_bytes)) | st.integers(0, 2**32 - 1))
    ciphertext = draw(st.binary(max_size=600))
    return sealing.MAGIC + struct.pack(">I", length) + outer_bytes + ciphertext


@given(bundle_bytes())
def test_bundle_reader_arbitrary_bytes(data: bytes) -> None:
    count("courier.sealing.addressee")
    to = refuses_only(lambda: sealing.addressee(data))
    assert to is None or isinstance(to, str)
    count("courier.sealing.unseal")
    # No key, no bundle: without the recipient's key nothing forges the tag.
    refuses(lambda: sealing.unseal(data, HUB_BUNDLE), "arbitrary bytes")


@given(st.sampled_from(BUNDLES), EDITS)
def test_bundle_reader_mutated_bundles(
    bundle: tuple[bytes, ec.EllipticCurvePrivateKey, Any, str], edits: list[tuple[int, int, int]]
) -> None:
    sealed, key, public, to = bundle
    changed = mutate(sealed, edits)
    _, outer_end = outer_of(sealed)

    count("courier.sealing.addressee")
    read = refuses_only(lambda: sealing.addressee(changed))
    if changed[:outer_end] == sealed[:outer_end]:
        assert read == to  # the clear header is as written: it reads as written
    count("courier.sealing.unseal")
    if changed == sealed:
        sealing.verify(sealing.unseal(changed, key), public, "fuzz")
    else:
        refuses(lambda: sealing.unseal(changed, key), "a changed bundle")


OPENED_UP = sealing.unseal(UP, HUB_BUNDLE)
REAL_INNER = inner(OPENED_UP)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=24)
)
VALUES = st.recursive(
    SCALARS,
    lambda values: (
        st.lists(values, max_size=3) | st.dictionaries(st.text(max_size=6), values, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def inner_payloads(draw: st.DrawFn) -> bytes:
    """What a sender may put inside a bundle it encrypts: the compressed inner record,
    right, changed, or not one at all."""
    shape = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 5, 5, 6, 7]))
    if shape == 7:  # a decompression bomb, up to four times the limit
        return zstd.compress(bytes(draw(st.integers(0, 4 * LIMIT))))
    if shape == 0:
        return draw(st.binary(max_size=512))
    if shape == 1:
        return zstd.compress(draw(st.binary(max_size=512)))
    if shape == 2:
        return zstd.compress(msgspec.msgpack.encode(draw(VALUES)))
    if shape == 3:
        return zstd.compress(mutate(REAL_INNER, draw(EDITS)))
    if shape == 4:
        return mutate(zstd.compress(REAL_INNER), draw(EDITS))
    # The real record, as it is or with fields replaced: by other bytes of the right
    # type (shape 5), or by any value at all under any name (shape 6).
    fields: dict[str, Any] = msgspec.msgpack.decode(REAL_INNER)
    names = ["body", "sig", "cert"] if shape == 5 else ["header", "body", "sig", "cert", "x"]
    values = (
        st.binary(max_size=80)
        if shape == 5
        else VALUES | st.builds(msgspec.msgpack.encode, VALUES) | st.binary(max_size=80)
    )
    for name in draw(st.lists(st.sampled_from(names), max_size=2)):
        fields[name] = draw(values)
    return zstd.compress(msgspec.msgpack.encode(fields))


@given(inner_payloads())
@example(zstd.compress(REAL_INNER))
@example(zstd.compress(inner(OPENED_UP, body=b"forged")))
@example(zstd.compress(inner(OPENED_UP, sig=b"\x30\x06\x02\x01\x01\x02\x01\x01")))
def test_bundle_reader_content_of_an_encrypting_sender(payload: bytes) -> None:
    """Anyone with the recipient's public key can encrypt anything to it: what decrypts
    is parsed with the same contract, and only the signer's signature makes it trusted."""
    count("courier.sealing.unseal")
    bundle = encrypt(payload, HUB_BUNDLE.public_key(), "hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sealing, "MAX_CONTENT_BYTES", LIMIT)
        opened = refuses_only(lambda: sealing.unseal(bundle, HUB_BUNDLE))
    if opened is None:
        return
    assert isinstance(opened.header, Header)
    assert len(opened.body) <= LIMIT
    count("courier.sealing.verify")
    if opened.signed == OPENED_UP.signed:
        # What the device signed, perhaps under another signature: ECDSA's (r, n - s)
        # verifies too, so either answer is right; it must still be one of the two.
        refuses_only(lambda: sealing.verify(opened, DEVICE_KEY.public_key(), "fuzz"))
    else:
        refuses(lambda: sealing.verify(opened, DEVICE_KEY.public_key(), "fuzz"), "a forgery")
