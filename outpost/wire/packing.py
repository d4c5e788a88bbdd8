"""Batch compression: the body of a `records` message sent compressed, as a `packed` one.

Negotiated per connection: the device offers encodings in its hello
(`Hello.compression`), the hub answers with those it accepts (`welcome`, for that
connection's `conn`), and the device packs batches only from then on, and only when that
makes them smaller. The encodings, preferred first:

- ``zstd-dict1``: a zstd frame made with the dictionary beside this module
  (`DICTIONARY_FILE`, 8 KiB, trained on Outpost's own records: inference and task
  results, roll-ups, events; `scripts/train_zstd_dict.py`). The few records an online
  device sends at a time shrink to about half what plain zstd makes of them. Its content
  is part of the contract: a new dictionary is a new encoding name, never a new file here.
- ``zstd``: a plain zstd frame.

Frames carry their content size (one segment), so a hub's window bound is the payload
limit. `unpack` refuses an encoding the hub does not accept, a frame that is corrupt,
truncated or followed by anything, and one that would decompress past the limit: it
stops there, having held at most the limit and a byte.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Final

import msgspec

from outpost import schema
from outpost.wire.codec import decode_body, encode
from outpost.wire.contract import ENCODINGS, WireError
from outpost.wire.up import Packed, Records

# Python 3.14's own module; the backport (the same code, by its authors) before it.
if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "DICTIONARY_FILE",
    "ENCODINGS",
    "LEVEL",
    "ZSTD",
    "ZSTD_DICT1",
    "Packer",
    "accepted",
    "choose",
    "dictionary",
    "unpack",
    "zstd",  # the binding itself, for the tools that train a dictionary or make test frames
]

ZSTD_DICT1, ZSTD = ENCODINGS
DICTIONARY_FILE: Final = "zstd-dict1.zdict"
# zstd's level 3 (its default). Measured on the demo's records (tests/bench/bench_link.py,
# scripts/demo_records.py): level 1 took as long on batches of 1 to 100 records and gave
# about 3 % more bytes; level 6 gave 3-7 % fewer for 2-4x the time on 100 to 500. Packing
# and unpacking a full batch costs about 1 µs a record at level 3, as much as encoding
# and decoding it plain: a Raspberry Pi's few times slower core still drains far faster
# than its link carries.
LEVEL: Final = 3
# zstd's smallest window (1 KiB): the floor of the window bound a limit gives.
_MIN_WINDOW_LOG: Final = 10


@functools.cache
def dictionary() -> zstd.ZstdDict:
    """The dictionary of ``zstd-dict1``, read once (8 KiB, shipped with the package).

    Read beside this file, not through importlib.resources: the package is always
    installed as files (wheels into a venv), and the resource readers import zipfile,
    ~0.3 MiB an agent would keep for one read."""
    data = Path(__file__).with_name(DICTIONARY_FILE).read_bytes()
    return zstd.ZstdDict(data)


def accepted(offer: Sequence[str], accepts: Collection[str]) -> list[str]:
    """The encodings of a device's `offer` that a hub accepting `accepts` answers with,
    in the device's order (names it does not know are left out)."""
    return [name for name in offer if name in accepts and name in ENCODINGS][:8]


def choose(offered: Sequence[str], answer: Sequence[str]) -> str | None:
    """The encoding a device uses: the first of its own offer the hub accepted."""
    return next((name for name in offered if name in answer and name in ENCODINGS), None)


class Packer:
    """Packs a device's `records` messages with one encoding, reusing one context (the
    uploader's only: a context is not for several threads at once)."""

    def __init__(self, encoding: str, *, level: int = LEVEL) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown batch encoding {encoding!r} (known: {ENCODINGS})")
        self.encoding = encoding
        zstd_dict = dictionary() if encoding == ZSTD_DICT1 else None
        self._compressor = zstd.ZstdCompressor(level=level, zstd_dict=zstd_dict)

    def pack(self, body: Records) -> bytes:
        """The `packed` message holding `body` (checked by `encode("records", body)`)."""
        raw = msgspec.msgpack.encode(body)
        compressor = self._compressor
        # Known up front, the size goes into the frame header and bounds its window.
        compressor.set_pledged_input_size(len(raw))
        data = compressor.compress(raw, mode=zstd.ZstdCompressor.FLUSH_FRAME)
        return encode("packed", Packed(encoding=self.encoding, data=data))


def unpack(body: Packed, *, accepts: Collection[str], max_bytes: int) -> Records:
    """The batch `body` holds, decompressed into at most `max_bytes` and checked as a
    `records` message's body is; raise `WireError` (reasons encoding, oversized,
    malformed, schema) and nothing else, whatever the bytes."""
    records: Records = decode_body(
        "records", _decompress(body, accepts, max_bytes), where="packed.data"
    )
    return records


def _decompress(body: Packed, accepts: Collection[str], max_bytes: int) -> bytes:
    if body.encoding not in accepts or body.encoding not in ENCODINGS:
        raise WireError(
            "encoding", f"batch encoding {schema.quote(body.encoding)} not accepted here"
        )
    try:
        declared = zstd.get_frame_info(body.data).decompressed_size
    except zstd.ZstdError as exc:
        raise WireError("malformed", f"{body.encoding} frame: {schema.quote(str(exc))}") from exc
    if declared is not None and declared > max_bytes:
        raise WireError(
            "oversized",
            f"{body.encoding} frame declares {declared} bytes, past the limit of {max_bytes}",
        )
    window_log = max(_MIN_WINDOW_LOG, (max_bytes - 1).bit_length())
    decompressor = zstd.ZstdDecompressor(
        zstd_dict=dictionary() if body.encoding == ZSTD_DICT1 else None,
        options={zstd.DecompressionParameter.window_log_max: window_log},
    )
    try:
        # One byte past the limit says it is exceeded without holding more than that.
        out = decompressor.decompress(body.data, max_length=max_bytes + 1)
    except zstd.ZstdError as exc:
        raise WireError("malformed", f"{body.encoding} frame: {schema.quote(str(exc))}") from exc
    if len(out) > max_bytes:
        raise WireError(
            "oversized", f"{body.encoding} frame decompresses past {max_bytes} bytes (refused)"
        )
    if not decompressor.eof:
        raise WireError("malformed", f"{body.encoding} frame is truncated")
    if decompressor.unused_data:
        raise WireError("malformed", f"{body.encoding} frame is followed by other data")
    return out
