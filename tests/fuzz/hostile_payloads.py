"""Payloads a compromised device can send: deep nesting, huge maps, arrays and strings,
wrong types, in every `up` kind. Built as raw msgpack bytes where Python's packer would
refuse (it stops at 511 levels; msgpack's unpacker accepts 1,024).

Shared by the unit tests of `wire.decode` and the fuzz tests against a running hub.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgpack

from outpost import schema, wire

DEPTH = 1000  # the issue's probe; msgpack's unpacker accepts up to 1,024
HUGE_TEXT = 200 * 1024  # under the 256 KB payload limit, so it reaches the decoder
HUGE_ENTRIES = 30_000


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def deep_list(depth: int = DEPTH) -> bytes:
    """`[[[...[nil]...]]]`, `depth` lists deep."""
    return b"\x91" * depth + b"\xc0"


def deep_map(depth: int = DEPTH) -> bytes:
    """`{"a": {"a": ... nil}}`, `depth` maps deep."""
    return b"\x81\xa1a" * depth + b"\xc0"


def map_of(items: list[tuple[Any, bytes]]) -> bytes:
    """A msgpack map whose values are already packed (so they may be anything)."""
    head = b"\xdf" + struct.pack(">I", len(items))
    return head + b"".join(pack(key) + value for key, value in items)


def envelope(of: str, body: bytes, **fields: bytes) -> bytes:
    """An envelope of kind `of` whose body (and any header field given) is raw msgpack."""
    header = {"v": pack(1), "kind": pack(of), "id": pack("0123456789abcdef"), "ts": pack(1)}
    header.update(fields)
    return map_of([*header.items(), ("body", body)])


def valid_bodies() -> dict[str, dict[str, Any]]:
    """One valid body of each `up` kind, as plain data."""
    load = wire.Load(cpu_percent=1, memory_percent=2, disk_percent=3, rss_bytes=4)
    bodies = {
        "hello": wire.Hello(
            conn="c-1",
            agent_version="0.1.0",
            profile="generic",
            heartbeat_interval=1.0,
            capabilities=wire.Capabilities(cores=2, memory_bytes=1, disk_bytes=1),
        ),
        "heartbeat": wire.Heartbeat(
            conn="c-1",
            uptime_s=1.0,
            heartbeat_interval=1.0,
            load=load,
            store=wire.StoreReport(
                streams={"results": wire.StreamFill(records=0, bytes=0)},
                counters={"refused.results": 0},
                bytes_written_per_record=0.0,
            ),
        ),
        "status": wire.Status(conn="c-1", online=True),
        "records": wire.Records.pack("events", 1, 1, [(1, 1.0, {"e": 1})]),
        "task_state": wire.TaskState(
            updates=[wire.TaskUpdate(task_id="tsk-" + "0" * 16, attempt=1, state="accepted")]
        ),
        "model_state": wire.ModelState(name="m", version="1.0.0", state="active"),
        "packed": wire.Packed(encoding="zstd", data=b"(\xb5/\xfd\x00X\x00\x00"),
    }
    assert set(bodies) == set(wire.UP_KINDS)
    return {kind: schema.dump(body) for kind, body in bodies.items()}


# Values of every msgpack type, and extremes of each.
ODD_VALUES: list[Any] = [
    None, True, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), float("-inf"), "", "é" * 70,
    b"\x00\xff", [], [None], {}, {"k": b"v"}, msgpack.ExtType(5, b"xx"),
    msgpack.Timestamp(1, 0),
]  # fmt: skip


def hostile(kind: str) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of every hostile shape for `kind`. All are invalid but the odd
    values, a few of which fit their field (a null optional, an empty list)."""
    body = valid_bodies()[kind]
    fields = list(body)

    def with_field(name: str, raw: bytes) -> bytes:
        return envelope(kind, map_of([(k, raw if k == name else pack(v)) for k, v in body.items()]))

    yield "deep list body", envelope(kind, deep_list())
    yield "deep map body", envelope(kind, deep_map())
    yield "deep list kind", envelope(kind, pack(body), kind=deep_list())
    yield "deep list version", envelope(kind, pack(body), v=deep_list())
    yield "deep map id", envelope(kind, pack(body), id=deep_map())
    yield "deep extra envelope key", map_of(
        [("v", pack(1)), ("kind", pack(kind)), ("id", pack("i")), ("ts", pack(1)),
         ("body", pack(body)), ("extra", deep_list())]
    )  # fmt: skip
    yield "too deep for msgpack", envelope(kind, deep_list(1100))
    for name in fields:
        yield f"deep list in {name}", with_field(name, deep_list())
        yield f"deep map in {name}", with_field(name, deep_map())
        yield f"huge string in {name}", with_field(name, pack("x" * HUGE_TEXT))
        yield f"huge bytes in {name}", with_field(name, pack(b"x" * HUGE_TEXT))
        yield f"huge array in {name}", with_field(name, pack([0] * (HUGE_TEXT // 2)))
        yield (
            f"huge map in {name}",
            with_field(name, map_of([(f"k{i}", b"\x00") for i in range(HUGE_ENTRIES)])),
        )
        yield f"map claiming 4G entries in {name}", with_field(name, b"\xdf\xff\xff\xff\xff")
        yield f"array claiming 4G items in {name}", with_field(name, b"\xdd\xff\xff\xff\xff")
        yield f"string claiming 4 GB in {name}", with_field(name, b"\xdb\xff\xff\xff\xff")
        for index, value in enumerate(ODD_VALUES):
            if value != body[name] or type(value) is not type(body[name]):
                yield f"odd value {index} in {name}", with_field(name, pack(value))
    yield "huge key", envelope(kind, map_of([*((k, pack(v)) for k, v in body.items()),
                                             ("k" * HUGE_TEXT, b"\x00")]))  # fmt: skip
    yield "many unknown keys", envelope(
        kind, map_of([*((k, pack(v)) for k, v in body.items()),
                      *((f"u{i}", b"\x00") for i in range(HUGE_ENTRIES))])
    )  # fmt: skip
    yield "bytes and str unknown keys", map_of(
        [("v", pack(1)), ("kind", pack(kind)), ("id", pack("i")), ("ts", pack(1)),
         ("body", pack(body)), (b"bytes-key", b"\x00"), ("str-key", b"\x00")]
    )  # fmt: skip
    yield "huge string kind", envelope(kind, pack(body), kind=pack("k" * HUGE_TEXT))
    yield "huge string version", envelope(kind, pack(body), v=pack("v" * HUGE_TEXT))
    yield "over the payload limit", envelope(kind, pack({"pad": "x" * wire.MAX_PAYLOAD_BYTES}))
    yield "not msgpack", b"\xc1" * 64
    yield "truncated", envelope(kind, pack(body))[:-3]
