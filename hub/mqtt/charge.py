"""What a device message costs the hub, in bytes: its payload's size, and for a `packed`
batch the size its frame declares it decompresses to.

A `packed` batch of 2 KB can hold 200 KB of records, and the ingest decompresses and
checks every one of them on the event loop: charged at its wire size, a device inside
its byte budget could buy a hundred times the ingest work an honest one does. So the
intake charges this cost against the device's byte budget and its queue's byte bounds
(hub/mqtt/intake.py), the link counts it toward a batch's byte limit (hub/mqtt/link.py),
and the ingest decompresses no more than it (hub/mqtt/ingest.py): one measure, so the
three agree.

The frame's header says the size (`Packer` always writes it), read without
decompressing anything. A frame that declares none could decompress to the payload
limit, so it costs that; the ingest stops there anyway.
"""

from __future__ import annotations

from typing import Any

import msgspec

from outpost import wire
from outpost.wire.packing import zstd

_PREFIX = wire.TOPIC_PREFIX + "/"


class _Frame(msgspec.Struct):
    data: bytes = b""


class _Packed(msgspec.Struct):
    """The one field of a `packed` envelope the cost needs (the others are ignored)."""

    body: _Frame


_PACKED = msgspec.msgpack.Decoder(_Packed)


def device_and_kind(topic: str) -> tuple[str, str]:
    """The device id and kind of an `up` topic, cheaply; anything else is one bucket
    (the broker's ACL lets devices write only their own contract topics)."""
    if topic.startswith(_PREFIX):
        parts = topic[len(_PREFIX) :].split("/", 2)
        if len(parts) == 3:
            return parts[0], parts[2]
    return "?", "?"


def cost(kind: str, payload: Any, limit: int) -> int:
    """The bytes a message of `kind` costs the hub, when the ingest refuses what passes
    `limit` (its max_payload_bytes)."""
    size = len(payload) if isinstance(payload, bytes | bytearray | str) else 0
    if kind != "packed" or size > limit or not isinstance(payload, bytes):
        return size  # the ingest refuses an oversized payload before decoding it
    try:
        data = _PACKED.decode(payload).body.data
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        # Refused as soon as it is decoded (nesting too deep too): no frame is opened.
        return size
    return max(size, unpacked_size(data, limit))


def unpacked_size(frame: bytes, limit: int) -> int:
    """The size a zstd frame declares, within `limit`: the limit when it declares none
    (or more); 0 for one too broken to read (refused before decompressing)."""
    try:
        declared = zstd.get_frame_info(frame).decompressed_size
    except zstd.ZstdError:
        return 0
    return limit if declared is None else min(declared, limit)
