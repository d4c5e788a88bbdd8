"""A sealed bundle as part files: each verifies on its own, and a part cut short, changed,
missing or doubled is named on import."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from outpost.courier import parts
from outpost.courier.parts import MARK, MIN_PART_BYTES, SUFFIX, PartHeader
from outpost.courier.sealing import BundleError

# The bytes of a bundle one part of the smallest size holds: what is left of the part
# once its mark, header (room for the largest) and end mark are counted.
CHUNK = MIN_PART_BYTES - parts._OVERHEAD


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


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


def part_file(header: PartHeader, piece: bytes) -> bytes:
    """A part file's bytes, made here as `write_parts` makes them."""
    header_bytes = msgspec.msgpack.encode(header)
    return MARK + struct.pack(">I", len(header_bytes)) + header_bytes + piece + parts.END


def header_end(raw: bytes) -> int:
    """Where a part file's header ends and its bytes begin."""
    size: int = struct.unpack(">I", raw[len(MARK) : len(MARK) + 4])[0]
    return len(MARK) + 4 + size


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    ("size", "max_size", "count"),
    [
        (0, MIN_PART_BYTES, 1),
        (1, MIN_PART_BYTES, 1),
        (CHUNK - 1, MIN_PART_BYTES, 1),
        (CHUNK, MIN_PART_BYTES, 1),  # exactly one part's worth
        (CHUNK + 1, MIN_PART_BYTES, 2),
        (3 * CHUNK, MIN_PART_BYTES, 3),  # an exact multiple
        (3 * CHUNK + 1, MIN_PART_BYTES, 4),
        (10 * CHUNK - 7, MIN_PART_BYTES, 10),
        (300_000, 1 << 20, 1),
        (300_000, 100_000, 4),
    ],
)
def test_parts_round_trip(tmp_path: Path, size: int, max_size: int, count: int) -> None:
    sealed = data(size)

    paths = parts.write_parts(sealed, tmp_path / "out", "dev-1.bundle", max_size)

    stem = f"dev-1.bundle-{hashlib.sha256(sealed).hexdigest()[:8]}"
    names = [f"{stem}.{n:03d}-of-{count:03d}{SUFFIX}" for n in range(1, count + 1)]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names  # no .tmp left
    assert all(p.stat().st_size <= max_size for p in paths)
    digest = hashlib.sha256(sealed).hexdigest()
    read = [parts.read_part(p) for p in paths]
    assert [(r.header.index, r.header.count) for r in read] == [
        (n, count) for n in range(1, count + 1)
    ]
    assert {(r.header.bundle, r.header.total) for r in read} == {(digest, size)}
    assert all(r.header.sha256 == hashlib.sha256(r.data).hexdigest() for r in read)
    assert b"".join(r.data for r in read) == sealed
    assert parts.assemble([tmp_path / "out"]) == [(names[0], sealed)]
    assert parts.assemble(reversed(paths)) == [(names[0], sealed)]
    blob = b"".join(p.read_bytes() for p in paths)  # several part files in one upload
    assert parts.join(parts.parts_of(blob, "the upload")) == [("the upload (part 1 in it)", sealed)]


def test_one_part_of_any_size_for_an_answer(tmp_path: Path) -> None:
    sealed = data(3 * MIN_PART_BYTES)

    blob = parts.as_part(sealed, "ack")

    found = parts.parts_of(blob, "ack")
    assert [(p.header.index, p.header.count, p.header.total) for p in found] == [
        (1, 1, len(sealed))
    ]
    assert parts.join(found) == [("ack (part 1 in it)", sealed)]
    path = tmp_path / f"ack.001-of-001{SUFFIX}"
    path.write_bytes(blob)
    assert parts.assemble([path]) == [(path.name, sealed)]


def test_a_max_size_below_the_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 64 KiB"):
        parts.write_parts(b"x", tmp_path, "b", MIN_PART_BYTES - 1)
    assert not tmp_path.joinpath(f"b.001-of-001{SUFFIX}").exists()
    assert len(parts.write_parts(b"x", tmp_path, "b", MIN_PART_BYTES)) == 1


# ----------------------------------------------------------------------- damaged parts


@pytest.fixture
def small_part(tmp_path: Path) -> tuple[Path, bytes]:
    """A one-part bundle of 300 bytes: its path and its file's bytes."""
    [path] = parts.write_parts(data(300), tmp_path / "stick", "b", MIN_PART_BYTES)
    return path, path.read_bytes()


def test_a_part_cut_short_anywhere_is_refused_by_name(small_part: tuple[Path, bytes]) -> None:
    path, raw = small_part
    assert parts.read_part(path).data == data(300)

    for length in range(len(MARK), len(raw)):
        path.write_bytes(raw[:length])
        reason = refused(lambda: parts.read_part(path), f"cut to {length}")
        assert reason.startswith(f"{path}: "), reason
        assert "cut short" in reason, f"cut to {length}: {reason}"
        assert reason == refused(lambda: parts.assemble([path.parent]), f"cut to {length}")
    path.write_bytes(raw)
    assert parts.assemble([path.parent]) == [(path.name, data(300))]


def test_a_part_cut_short_within_its_mark_is_called_cut_short(
    small_part: tuple[Path, bytes],
) -> None:
    path, raw = small_part
    for length in range(len(MARK)):
        path.write_bytes(raw[:length])
        reason = refused(lambda: parts.read_part(path), f"cut to {length}")
        assert "cut short" in reason, f"cut to {length}: {reason}"


def test_a_padded_part_is_refused(small_part: tuple[Path, bytes]) -> None:
    path, raw = small_part
    path.write_bytes(raw + b"\0")

    reason = refused(lambda: parts.read_part(path))

    assert reason.startswith(f"{path}: part 1 of 1 is cut short or padded")
    assert f"({len(raw) + 1:,} bytes, {len(raw):,} expected)" in reason


def test_a_changed_byte_in_a_parts_data_fails_its_checksum(
    small_part: tuple[Path, bytes],
) -> None:
    path, raw = small_part
    start = header_end(raw)

    for position in range(start, len(raw) - len(parts.END)):
        changed = bytearray(raw)
        changed[position] ^= 1 << (position % 8)
        path.write_bytes(changed)
        reason = refused(lambda: parts.read_part(path), f"byte {position}")
        assert reason == (
            f"{path}: part 1 of 1 does not match its checksum: changed or damaged since it "
            "was written"
        )
    path.write_bytes(raw)
    assert parts.read_part(path).data == data(300)


def test_a_changed_bit_anywhere_in_a_part_is_refused_on_assembly(
    small_part: tuple[Path, bytes],
) -> None:
    """The checksum covers a part's bytes; the rest of its header is checked on joining."""
    path, raw = small_part

    for position in range(len(raw)):
        changed = bytearray(raw)
        changed[position] ^= 1 << (position % 8)
        path.write_bytes(changed)
        reason = refused(lambda: parts.assemble([path.parent]), f"byte {position}")
        assert path.name in reason, f"byte {position}: {reason}"
    path.write_bytes(raw)
    assert parts.assemble([path.parent]) == [(path.name, data(300))]


def test_a_part_header_of_other_bytes_is_refused_on_joining(tmp_path: Path) -> None:
    sealed = data(200)
    digest = hashlib.sha256(sealed).hexdigest()
    right = PartHeader(digest, 1, 1, 200, digest, 200)
    path = tmp_path / f"b.001-of-001{SUFFIX}"
    path.write_bytes(part_file(right, sealed))
    assert parts.assemble([tmp_path]) == [(path.name, sealed)]

    for wrong in (
        PartHeader("0" * 64, 1, 1, 200, digest, 200),  # another bundle's digest
        PartHeader(digest, 1, 1, 200, digest, 201),  # another total
    ):
        path.write_bytes(part_file(wrong, sealed))
        assert refused(lambda: parts.assemble([tmp_path])) == (
            f"{path.name}: its parts do not make the bundle they name"
        )


@pytest.mark.parametrize(
    "raw",
    [
        MARK + b"\xff\xff\xff\xff" + bytes(100),
        MARK + struct.pack(">I", 5) + b"hello" + parts.END,
        MARK + struct.pack(">I", 3) + msgspec.msgpack.encode({"a": 1}) + parts.END,
    ],
    ids=["huge-header", "junk-header", "header-without-fields"],
)
def test_a_part_with_a_malformed_header_is_refused(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / f"b.001-of-001{SUFFIX}"
    path.write_bytes(raw)

    assert refused(lambda: parts.read_part(path)).startswith(f"{path}: its header is malformed")


@pytest.mark.parametrize("raw", [b"OUTPOST-BUNDLE/1\n", b"\x89PNG\r\n\x1a\n" + bytes(64)])
def test_a_file_that_is_not_a_part_is_refused(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / f"b.001-of-001{SUFFIX}"
    path.write_bytes(raw)

    assert refused(lambda: parts.read_part(path)) == f"{path}: not a part of an Outpost bundle"


def test_an_unreadable_part_is_refused(tmp_path: Path) -> None:
    path = tmp_path / f"b.001-of-001{SUFFIX}"
    path.mkdir()

    assert refused(lambda: parts.read_part(path)).startswith(f"{path}: cannot read:")
    assert refused(lambda: parts.find_parts([tmp_path / "nothing"])).endswith(
        "no such file or folder"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert refused(lambda: parts.find_parts([empty])) == f"no bundle parts (*.opb) found in {empty}"


def test_parts_of_an_upload_name_the_bad_one() -> None:
    good = parts.as_part(data(100), "a")
    bad = bytearray(parts.as_part(data(100, seed=2), "b"))
    bad[-len(parts.END) - 1] ^= 1

    reason = refused(lambda: parts.parts_of(good + bytes(bad), "the upload"))

    assert reason.startswith("the upload (part 2 in it): part 1 of 1 does not match its checksum")
    assert refused(lambda: parts.parts_of(b"", "the upload")) == "the upload: empty"
    assert len(parts.parts_of(good + good, "the upload")) == 2


# -------------------------------------------------------------- missing, doubled, mixed


@pytest.fixture
def three_parts(tmp_path: Path) -> tuple[list[Path], bytes]:
    sealed = data(2 * CHUNK + 10)
    return parts.write_parts(sealed, tmp_path / "stick", "b", MIN_PART_BYTES), sealed


@pytest.mark.parametrize("gone", [1, 2, 3])
def test_a_missing_part_is_named(three_parts: tuple[list[Path], bytes], gone: int) -> None:
    paths, sealed = three_parts
    folder = paths[0].parent
    assert parts.assemble([folder]) == [(paths[0].name, sealed)]
    kept = paths[gone - 1].read_bytes()
    paths[gone - 1].unlink()

    reason = refused(lambda: parts.assemble([folder]))

    first = paths[1 if gone == 1 else 0].name
    digest = hashlib.sha256(sealed).hexdigest()
    assert reason == f"{first}: bundle {digest[:12]} needs parts 1 to 3; missing [{gone}]"
    paths[gone - 1].write_bytes(kept)
    assert parts.assemble([folder]) == [(paths[0].name, sealed)]


def test_a_doubled_part_is_named(three_parts: tuple[list[Path], bytes]) -> None:
    paths, sealed = three_parts
    folder = paths[0].parent
    copy = folder / f"b-copy.002-of-003{SUFFIX}"
    shutil.copy(paths[1], copy)

    reason = refused(lambda: parts.assemble([folder]))

    assert reason.startswith(f"{paths[0].name}: bundle ")
    assert reason.endswith("needs parts 1 to 3; found part(s) [2] twice")
    copy.unlink()
    assert parts.assemble([folder]) == [(paths[0].name, sealed)]


def test_a_staging_file_left_behind_is_not_a_part(three_parts: tuple[list[Path], bytes]) -> None:
    paths, sealed = three_parts
    folder = paths[0].parent
    staged = folder / (paths[1].name + ".tmp")
    staged.write_bytes(paths[1].read_bytes()[:1000])  # an export interrupted mid-write

    assert parts.find_parts([folder]) == paths
    assert parts.assemble([folder]) == [(paths[0].name, sealed)]
    # Were it taken as a part, it would be refused: the test above shows it was not.
    staged.rename(folder / f"c.002-of-003{SUFFIX}")
    assert "cut short" in refused(lambda: parts.assemble([folder]))


def test_parts_of_two_bundles_in_one_folder_make_two_bundles(tmp_path: Path) -> None:
    first, second = data(CHUNK + 5, seed=1), data(700, seed=2)
    parts.write_parts(first, tmp_path, "dev-1.bundle", MIN_PART_BYTES)
    parts.write_parts(second, tmp_path, "dev-2.bundle", MIN_PART_BYTES)
    (tmp_path / "notes.txt").write_text("not a part")

    bundles = parts.assemble([tmp_path])

    def short(sealed: bytes) -> str:
        return hashlib.sha256(sealed).hexdigest()[:8]

    assert sorted(bundles) == [
        (f"dev-1.bundle-{short(first)}.001-of-002{SUFFIX}", first),
        (f"dev-2.bundle-{short(second)}.001-of-001{SUFFIX}", second),
    ]


def test_parts_of_two_bundles_with_one_incomplete_refuse_the_lot(tmp_path: Path) -> None:
    first, second = data(CHUNK + 5, seed=1), data(700, seed=2)
    written = parts.write_parts(first, tmp_path, "dev-1.bundle", MIN_PART_BYTES)
    parts.write_parts(second, tmp_path, "dev-2.bundle", MIN_PART_BYTES)
    written[1].unlink()

    assert refused(lambda: parts.assemble([tmp_path])).endswith("missing [2]")


def test_a_part_claiming_a_huge_count_is_refused(tmp_path: Path) -> None:
    sealed = data(100)
    digest = hashlib.sha256(sealed).hexdigest()
    path = tmp_path / f"b.001-of-001{SUFFIX}"
    path.write_bytes(part_file(PartHeader(digest, 1, 1, 100, digest, 100), sealed))
    assert parts.assemble([tmp_path]) == [(path.name, sealed)]

    path.write_bytes(part_file(PartHeader(digest, 1, 1 << 62, 100, digest, 100), sealed))

    with pytest.raises(BundleError, match=r"its header is malformed: .* at `\$\.count`"):
        parts.assemble([tmp_path])
    # As many as a bundle may have, one missing: named, not listed one by one.
    path.write_bytes(part_file(PartHeader(digest, 1, parts.MAX_PARTS, 100, digest, 100), sealed))
    with pytest.raises(BundleError, match=r"needs parts 1 to 100000; missing") as caught:
        parts.assemble([tmp_path])
    assert str(caught.value).endswith(
        "missing [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (99,999 in all)]"
    )


# ------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100M", 100 << 20),
        ("1.5G", 3 << 29),
        ("512KiB", 512 << 10),
        ("65536", 65536),
        ("64K", 65536),
        ("64k", 65536),
        ("0.0625M", 65536),
        (" 2 MiB ", 2 << 20),
        ("2mb", 2 << 20),
        ("1g", 1 << 30),
        ("70000b", 70000),
        ("65536.9", 65536),
    ],
)
def test_parse_size_accepts(text: str, size: int) -> None:
    assert parts.parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "give bytes, or a number with K, M or G"),
        ("junk", "give bytes, or a number with K, M or G"),
        ("100X", "give bytes, or a number with K, M or G"),
        ("100MM", "give bytes, or a number with K, M or G"),
        ("-1M", "give bytes, or a number with K, M or G"),
        ("1e6", "give bytes, or a number with K, M or G"),
        ("M", "give bytes, or a number with K, M or G"),
        ("1.5.5G", "give bytes, or a number with K, M or G"),
        ("inf", "give bytes, or a number with K, M or G"),
        ("1T", "give bytes, or a number with K, M or G"),
        ("65535", "at least 64 KiB"),
        ("63K", "at least 64 KiB"),
        ("0", "at least 64 KiB"),
        ("0.06M", "at least 64 KiB"),
    ],
)
def test_parse_size_refuses(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        parts.parse_size(text)
    assert f"--max-size {text!r}" in str(caught.value)


def test_parse_size_refuses_a_number_too_large_for_a_float() -> None:
    with pytest.raises(ValueError, match="--max-size"):
        parts.parse_size("9" * 400)


def test_a_part_header_nested_thousands_deep_is_refused_as_malformed(tmp_path: Path) -> None:
    """An unknown field is skipped by recursion: nested deep enough, it raised
    RecursionError (a traceback in both CLIs) from a header anyone can write."""
    encoded = msgspec.msgpack.encode(PartHeader("0" * 64, 1, 1, 0, "0" * 64, 0))
    deep = bytes([encoded[0] + 1]) + encoded[1:] + msgspec.msgpack.encode("zz")
    deep += b"\x91" * 3000 + b"\xc0"
    assert len(deep) <= parts.MAX_HEADER_BYTES
    path = tmp_path / f"x.001-of-001{SUFFIX}"
    path.write_bytes(MARK + struct.pack(">I", len(deep)) + deep + parts.END)

    assert "its header is malformed" in refused(lambda: parts.assemble([path]))


def test_two_bundles_with_one_stem_keep_their_own_parts(tmp_path: Path) -> None:
    """Two bundles for one device written in the same second (the stem names the second)
    each keep their parts: before, the second overwrote the first's."""
    first, second = data(500, seed=1), data(500, seed=2)

    stem = "outpost-hub-for-dev-1-20261206T120000Z"
    parts.write_parts(first, tmp_path, stem, MIN_PART_BYTES)
    parts.write_parts(second, tmp_path, stem, MIN_PART_BYTES)

    assert sorted(sealed for _, sealed in parts.assemble([tmp_path])) == sorted([first, second])


def test_a_part_padded_by_a_gigabyte_is_refused_before_it_is_read(
    small_part: tuple[Path, bytes],
) -> None:
    """A file named by mistake (a disk image, say) was read whole into memory first."""
    path, _ = small_part
    with path.open("r+b") as f:
        f.truncate(1 << 30)  # sparse: no disk used
    tracemalloc.start()
    try:
        reason = refused(lambda: parts.read_part(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason.startswith(f"{path}: part 1 of 1 is cut short or padded")
    assert peak < 16 << 20


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """/dev/zero took gigabytes before anything was said; a FIFO waited for ever."""
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / f"b.001-of-001{SUFFIX}"
        os.mkfifo(path)
    reason = refused(lambda: parts.read_part(path))
    assert reason == f"{path}: not a regular file, so not a part of a bundle"
