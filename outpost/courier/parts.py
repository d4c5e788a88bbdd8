"""A sealed bundle as files on a stick: parts of at most `max_size` bytes, each of which
verifies on its own, so that a part cut short (the stick pulled out while writing) or
changed is named on import, before anything is decrypted.

A part file: `MARK`, a 4-byte big-endian header length, the header (msgpack: the
bundle's id, this part's number and the count, the sizes and SHA-256 of this part's
bytes and of the whole bundle), the bytes, then `END`. Each is written under a `.tmp`
name, synced, and renamed: a part with its final name was written whole.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from outpost import files
from outpost.courier.sealing import BundleError

MARK: Final = b"OUTPOST-PART/1\n"
END: Final = b"\nOUTPOST-PART-END\n"
SUFFIX: Final = ".opb"
MIN_PART_BYTES: Final = 64 * 1024
MAX_HEADER_BYTES: Final = 4096
_OVERHEAD: Final = len(MARK) + 4 + MAX_HEADER_BYTES + len(END)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """`100M`, `1.5G`, `512KiB` or a number of bytes (`--max-size`)."""
    found = _SIZE.match(text)
    if not found:
        raise ValueError(f"--max-size {text!r}: give bytes, or a number with K, M or G")
    number = float(found.group(1)) * _UNITS[(found.group(2) or "").lower()[:1]]
    if not math.isfinite(number) or number > 1 << 50:
        raise ValueError(f"--max-size {text!r}: too large")
    size = int(number)
    if size < MIN_PART_BYTES:
        raise ValueError(f"--max-size {text!r}: at least {MIN_PART_BYTES // 1024} KiB")
    return size


MAX_PARTS: Final = 100_000  # a bundle's parts, at most (1 GiB of content in 64 KiB parts)
_HEX64 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
_COUNT = Annotated[int, Meta(ge=1, le=MAX_PARTS)]
_BYTES = Annotated[int, Meta(ge=0, le=1 << 40)]


class PartHeader(msgspec.Struct, frozen=True):
    bundle: _HEX64  # the whole bundle's SHA-256, hex: parts of one bundle share it
    index: _COUNT  # 1-based
    count: _COUNT
    size: _BYTES  # bytes of this part
    sha256: _HEX64  # of this part's bytes
    total: _BYTES  # bytes of the whole bundle


@dataclass(frozen=True)
class Part:
    path: Path
    header: PartHeader
    data: bytes


def write_parts(sealed: bytes, folder: Path, stem: str, max_size: int) -> list[Path]:
    """Write `sealed` into `folder` as `stem-HASH.NNN-of-MMM.opb` files of at most
    `max_size` bytes each; return their paths. HASH, the start of the bundle's sha256,
    keeps two bundles whose stems match (made in the same second) from overwriting each
    other's parts."""
    if max_size < MIN_PART_BYTES:
        raise ValueError(f"--max-size must be at least {MIN_PART_BYTES // 1024} KiB")
    chunk = max_size - _OVERHEAD
    pieces = [sealed[i : i + chunk] for i in range(0, len(sealed), chunk)] or [b""]
    digest = hashlib.sha256(sealed).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, piece in enumerate(pieces, start=1):
        header = PartHeader(
            digest,
            number,
            len(pieces),
            len(piece),
            hashlib.sha256(piece).hexdigest(),
            len(sealed),
        )
        header_bytes = msgspec.msgpack.encode(header)
        path = folder / f"{stem}-{digest[:8]}.{number:03d}-of-{len(pieces):03d}{SUFFIX}"
        # Staged, synced and renamed (with the folder synced): a part with its final name
        # was written whole.
        files.replace(
            path,
            MARK + struct.pack(">I", len(header_bytes)) + header_bytes + piece + END,
            files.PRIVATE,
        )
        written.append(path)
    return written


def read_part(path: Path) -> Part:
    """One part, checked whole; `BundleError` saying what is wrong with it.

    Its header is read first, and the rest only if the file is as long as the header
    says: a file named by mistake (a disk image, /dev/zero) was read whole into memory
    before it could be refused."""
    name = str(path)
    try:
        # Not blocking: a FIFO named by mistake would wait for a writer for ever.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            size = os.fstat(f.fileno())
            if not stat.S_ISREG(size.st_mode):
                raise BundleError(f"{name}: not a regular file, so not a part of a bundle")
            raw = f.read(len(MARK) + 4 + MAX_HEADER_BYTES)
            header, data_at = _head(raw, name, at=0)
            end = data_at + header.size + len(END)
            if size.st_size != end:
                raise _cut(name, header, size.st_size, end)
            raw += f.read(end - len(raw))
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    part, _ = _parse(raw, name, alone=True, at=0)
    return Part(path, part.header, part.data)


def parts_of(blob: bytes, name: str) -> list[Part]:
    """The parts in `blob`, one part file's bytes after another (an upload of several
    part files at once), each checked whole."""
    found: list[Part] = []
    at = 0
    while at < len(blob):  # by offset: a copy of the rest after each part was quadratic
        part, at = _parse(blob, f"{name} (part {len(found) + 1} in it)", alone=False, at=at)
        found.append(part)
    if not found:
        raise BundleError(f"{name}: empty")
    return found


def as_part(sealed: bytes, name: str) -> bytes:
    """`sealed` as the bytes of one part file (of any size): for an answer over HTTP."""
    digest = hashlib.sha256(sealed).hexdigest()
    header = PartHeader(digest, 1, 1, len(sealed), digest, len(sealed))
    header_bytes = msgspec.msgpack.encode(header)
    return MARK + struct.pack(">I", len(header_bytes)) + header_bytes + sealed + END


def _parse(raw: bytes, name: str, *, alone: bool, at: int) -> tuple[Part, int]:
    """The part at offset `at` of `raw`, and the offset after it (nothing may follow it
    when `alone`)."""
    header, data_at = _head(raw, name, at=at)
    end = data_at + header.size + len(END)
    whole = raw[end - len(END) : end] == END and (len(raw) == end or not alone)
    if not whole:
        raise _cut(name, header, len(raw) - at, end - at)
    data = raw[data_at : end - len(END)]
    if hashlib.sha256(data).hexdigest() != header.sha256:
        raise BundleError(
            f"{name}: part {header.index} of {header.count} does not match its checksum: "
            "changed or damaged since it was written"
        )
    return Part(Path(name), header, data), end


def _cut(name: str, header: PartHeader, size: int, expected: int) -> BundleError:
    return BundleError(
        f"{name}: part {header.index} of {header.count} is cut short or padded "
        f"({size:,} bytes, {expected:,} expected): the stick was removed while "
        "it was written? Export it again."
    )


def _head(raw: bytes, name: str, *, at: int) -> tuple[PartHeader, int]:
    """The header of the part at offset `at` of `raw`, and the offset of its data."""
    if not raw.startswith(MARK, at):
        if MARK.startswith(raw[at : at + len(MARK)]):  # empty, or cut within the mark
            raise BundleError(f"{name}: cut short ({len(raw) - at} bytes): written only in part?")
        raise BundleError(f"{name}: not a part of an Outpost bundle")
    start = at + len(MARK) + 4
    if len(raw) < start:
        raise BundleError(f"{name}: cut short ({len(raw) - at} bytes): written only in part?")
    (size,) = struct.unpack(">I", raw[start - 4 : start])
    if size > MAX_HEADER_BYTES:
        raise BundleError(f"{name}: its header is malformed")
    if len(raw) < start + size:
        raise BundleError(f"{name}: cut short in its header: written only in part?")
    try:
        header = msgspec.msgpack.decode(raw[start : start + size], type=PartHeader)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        # RecursionError: an unknown field nested thousands deep, skipped by recursion.
        raise BundleError(f"{name}: its header is malformed: {exc}") from exc
    if header.index > header.count:
        raise BundleError(f"{name}: its header is malformed: part {header.index} of {header.count}")
    return header, start + size


def find_parts(paths: Iterable[Path]) -> list[Path]:
    """The part files named, a folder standing for the parts directly in it."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.name.endswith(SUFFIX)))
        elif path.exists() or path.name.endswith(SUFFIX):
            found.append(path)
        else:
            raise BundleError(f"{path}: no such file or folder")
    if not found:
        raise BundleError("no bundle parts (*.opb) found in " + ", ".join(map(str, paths)))
    return found


def assemble(paths: Iterable[Path]) -> list[tuple[str, bytes]]:
    """Each whole bundle among the parts, as (its first part's name, its bytes); a bundle
    with a part missing or doubled is refused by name, as is a bad part."""
    return join([read_part(path) for path in find_parts(paths)])


def join(found: list[Part]) -> list[tuple[str, bytes]]:
    """Each whole bundle among `found`, as (its first part's name, its bytes)."""
    by_bundle: dict[str, list[Part]] = defaultdict(list)
    for part in found:
        by_bundle[part.header.bundle].append(part)
    bundles = []
    for digest, parts in by_bundle.items():
        parts.sort(key=lambda p: p.header.index)
        count = parts[0].header.count
        numbers = [p.header.index for p in parts]
        if numbers != list(range(1, count + 1)):
            missing = sorted(set(range(1, count + 1)) - set(numbers))
            shown = f"{missing[:10]}"[:-1] + (f", ... ({len(missing):,} in all)]"
                                              if len(missing) > 10 else "]")  # fmt: skip
            doubled = sorted({n for n in numbers if numbers.count(n) > 1})[:10]
            raise BundleError(
                f"{parts[0].path.name}: bundle {digest[:12]} needs parts 1 to {count}; "
                + (f"missing {shown}" if missing else f"found part(s) {doubled} twice")
            )
        sealed = b"".join(p.data for p in parts)
        if len(sealed) != parts[0].header.total or hashlib.sha256(sealed).hexdigest() != digest:
            raise BundleError(f"{parts[0].path.name}: its parts do not make the bundle they name")
        bundles.append((parts[0].path.name, sealed))
    return bundles
