"""Unit tests of outpost/wire/: topics, the msgpack envelope and its refusals."""

from __future__ import annotations

import contextlib
import math
import random
import re
from typing import Any

import msgpack
import msgspec
import pytest

from outpost import schema, wire
from outpost.wire import Capabilities, Heartbeat, Hello, Load, Status, WireError

DEVICE = "dev-abc123"

HELLO = Hello(
    conn="c-1",
    agent_version="0.1.0",
    profile="raspberry-pi-4",
    heartbeat_interval=10.0,
    capabilities=Capabilities(
        cores=4,
        memory_bytes=4 << 30,
        disk_bytes=32 << 30,
        accelerator="none",
        arch="aarch64",
    ),
)
HEARTBEAT = Heartbeat(
    conn="c-1",
    uptime_s=12.5,
    heartbeat_interval=10.0,
    load=Load(
        cpu_percent=12.0,
        memory_percent=40.5,
        disk_percent=3.0,
        rss_bytes=30 << 20,
        temperature_c=55.5,
    ),
)
STATUS = Status(conn="c-1", online=True)

BODIES: list[tuple[str, Any]] = [("hello", HELLO), ("heartbeat", HEARTBEAT), ("status", STATUS)]


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


_STATUS_BODY: Any = object()


def raw_envelope(kind: str = "status", body: Any = _STATUS_BODY, **changes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "v": 1,
        "kind": kind,
        "id": "0123456789abcdef",
        "ts": 1_700_000_000_000,
        "body": schema.dump(STATUS) if body is _STATUS_BODY else body,
    }
    envelope.update(changes)
    return envelope


def refused(payload: bytes, **kwargs: Any) -> WireError:
    kwargs.setdefault("kinds", wire.UP_KINDS)
    with pytest.raises(WireError) as info:
        wire.decode(payload, **kwargs)
    return info.value


# ---------------------------------------------------------------------------- topics


def test_up_and_down_topics() -> None:
    assert wire.up_topic(DEVICE, "hello") == "outpost/v1/dev/dev-abc123/up/hello"
    assert wire.down_topic(DEVICE, "policy") == "outpost/v1/dev/dev-abc123/down/policy"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("outpost/v1/dev/dev-abc123/up/hello", (DEVICE, "up", "hello")),
        ("outpost/v1/dev/dev-abc123/down/policy", (DEVICE, "down", "policy")),
        ("outpost/v1/dev/dev-0123456789/up/heart_beat-2", ("dev-0123456789", "up", "heart_beat-2")),
        (f"outpost/v1/dev/dev-{'a' * 32}/up/x", (f"dev-{'a' * 32}", "up", "x")),
    ],
)
def test_parse_topic_accepts_device_topics(topic: str, expected: tuple[str, str, str]) -> None:
    assert wire.parse_topic(topic) == expected


def test_parse_topic_inverts_up_and_down_topic() -> None:
    assert wire.parse_topic(wire.up_topic(DEVICE, "status")) == (DEVICE, "up", "status")
    assert wire.parse_topic(wire.down_topic(DEVICE, "task")) == (DEVICE, "down", "task")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "outpost/v1/dev",
        "outpost/v1/dev/",
        "outpost/v2/dev/dev-abc123/up/hello",  # wrong version
        "Outpost/v1/dev/dev-abc123/up/hello",  # wrong case
        "/outpost/v1/dev/dev-abc123/up/hello",  # leading slash
        "other/v1/dev/dev-abc123/up/hello",  # wrong prefix
        "outpost/v1/devs/dev-abc123/up/hello",
        "outpost/v1/dev/dev-abc123/sideways/hello",  # bad direction
        "outpost/v1/dev/dev-abc123/UP/hello",
        "outpost/v1/dev/dev-abc123/up",  # too few levels
        "outpost/v1/dev/dev-abc123/up/",  # empty kind
        "outpost/v1/dev/dev-abc123/up/hello/extra",  # extra level
        "outpost/v1/dev/dev-abc123/up/hello/",  # trailing slash
        "outpost/v1/dev//dev-abc123/up/hello",  # empty level
        "outpost/v1/dev/+/up/hello",  # wildcards
        "outpost/v1/dev/#",
        "outpost/v1/dev/dev-abc123/up/#",
        "outpost/v1/dev/dev-abc123/up/+",
        "outpost/v1/dev/dev-abc+23/up/hello",
        "outpost/v1/dev/dev-abc#23/up/hello",
        "outpost/v1/dev/dev-abc123/+/hello",
        wire.UP_WILDCARD,
        "outpost/v1/dev/abc123/up/hello",  # no dev- prefix
        "outpost/v1/dev/dev-abc12/up/hello",  # too short
        f"outpost/v1/dev/dev-{'a' * 33}/up/hello",  # too long
        "outpost/v1/dev/dev-ABC123/up/hello",  # upper case
        "outpost/v1/dev/dev-abc_123/up/hello",
        "outpost/v1/dev/dev-abc123\n/up/hello",  # trailing newline in the id
        "outpost/v1/dev/dev-abc123/up/Hello",  # bad kind
        "outpost/v1/dev/dev-abc123/up/1hello",
        "outpost/v1/dev/dev-abc123/up/hel lo",
        "outpost/v1/dev/dev-abc123/up/hello\n",
        f"outpost/v1/dev/dev-abc123/up/{'k' * 33}",
        "$share/hub/outpost/v1/dev/dev-abc123/up/hello",
    ],
)
def test_parse_topic_refuses_other_topics(topic: str) -> None:
    with pytest.raises(WireError) as info:
        wire.parse_topic(topic)
    assert info.value.reason == "topic"


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(("kind", "body"), BODIES)
def test_encode_decode_round_trip(kind: str, body: Any) -> None:
    payload = wire.encode(kind, body, ts_ms=1234, msg_id="m-1")
    envelope = wire.decode(payload, kinds=wire.UP_KINDS, expected_kind=kind)
    assert envelope == wire.Envelope(v=wire.VERSION, kind=kind, id="m-1", ts=1234, body=body)
    assert type(envelope.body) is type(body)


def test_round_trip_of_optional_none() -> None:
    body = Heartbeat(
        conn="c",
        uptime_s=0,
        heartbeat_interval=0.5,
        load=Load(cpu_percent=0, memory_percent=0, disk_percent=0, rss_bytes=0),
    )
    envelope = wire.decode(wire.encode("heartbeat", body), kinds=wire.UP_KINDS)
    assert envelope.body == body
    assert envelope.body.load.temperature_c is None


def test_encode_defaults_id_and_time() -> None:
    first = wire.decode(wire.encode("status", STATUS), kinds=wire.UP_KINDS)
    second = wire.decode(wire.encode("status", STATUS), kinds=wire.UP_KINDS)
    assert first.id != second.id
    assert first.id
    assert first.ts > 1_600_000_000_000  # milliseconds, not seconds


def test_encoded_envelope_has_exactly_the_contract_fields() -> None:
    raw = msgpack.unpackb(wire.encode("status", STATUS, ts_ms=5, msg_id="x"), raw=False)
    body = {"conn": "c-1", "online": True}
    assert raw == {"v": 1, "kind": "status", "id": "x", "ts": 5, "body": body}


def test_decode_without_expected_kind_takes_the_envelope_kind() -> None:
    envelope = wire.decode(wire.encode("hello", HELLO), kinds=wire.UP_KINDS)
    assert envelope.kind == "hello"
    assert envelope.body == HELLO


def test_payload_at_the_size_limit_is_accepted() -> None:
    payload = wire.encode("status", STATUS)
    assert wire.decode(payload, kinds=wire.UP_KINDS, max_bytes=len(payload)).body == STATUS


# ---------------------------------------------------------------------------- refusals


def test_oversized_payload_is_refused() -> None:
    payload = wire.encode("status", STATUS)
    assert refused(payload, max_bytes=len(payload) - 1).reason == "oversized"


def test_default_limit_is_max_payload_bytes() -> None:
    payload = pack(
        raw_envelope(body={"conn": "c", "online": True, "pad": "x" * wire.MAX_PAYLOAD_BYTES})
    )
    assert len(payload) > wire.MAX_PAYLOAD_BYTES
    assert refused(payload).reason == "oversized"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\xff\x00garbage",
        b"not msgpack at all",
        pack(raw_envelope())[:-3],  # truncated
        pack(raw_envelope())[:1],
        pack(raw_envelope()) + b"\x00",  # trailing bytes
        pack([1, "status", "id", 1, {}]),  # a list, not a map
        pack("a string"),
        pack(1),
        pack(None),
        pack(b"bytes"),
        pack({1: "integer key"}),
    ],
)
def test_malformed_payload_is_refused(payload: bytes) -> None:
    assert refused(payload).reason == "malformed"


@pytest.mark.parametrize("version", [2, 0, -1, "1", None, [1]])
def test_other_versions_are_refused(version: Any) -> None:
    assert refused(pack(raw_envelope(v=version))).reason == "version"


def test_missing_version_is_refused() -> None:
    envelope = raw_envelope()
    del envelope["v"]
    assert refused(pack(envelope)).reason == "version"


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_one(version: Any) -> None:
    # True == 1 == 1.0 in Python; the wire contract's version is the msgpack integer 1.
    assert refused(pack(raw_envelope(v=version))).reason == "version"


@pytest.mark.parametrize("kind", ["unknown", "", None, 7, ["status"], "STATUS"])
def test_unknown_kind_is_refused(kind: Any) -> None:
    assert refused(pack(raw_envelope(kind=kind))).reason == "kind"


def test_missing_kind_is_refused() -> None:
    envelope = raw_envelope()
    del envelope["kind"]
    assert refused(pack(envelope)).reason == "kind"


def test_kind_differing_from_expected_kind_is_refused() -> None:
    payload = wire.encode("status", STATUS)
    assert refused(payload, expected_kind="hello").reason == "kind"


def test_kind_not_in_the_given_table_is_refused() -> None:
    payload = wire.encode("status", STATUS)
    assert refused(payload, kinds=wire.DOWN_KINDS).reason == "kind"


@pytest.mark.parametrize(
    ("kind", "body", "where"),
    [
        ("status", {"conn": "c", "online": "yes"}, "status.body.online"),  # wrong type
        ("status", {"conn": 1, "online": True}, "status.body.conn"),
        ("status", {"conn": "c", "online": 1}, "status.body.online"),
        ("status", {"conn": "c", "online": True, "extra": 1}, "status.body.extra"),  # unknown
        ("status", {"conn": "c"}, "status.body.online"),  # missing
        ("status", {}, "status.body"),
        ("status", None, "status.body"),
        ("status", ["c", True], "status.body"),
        ("status", {"conn": "c" * 65, "online": True}, "status.body.conn"),
        (
            "hello",
            {**schema.dump(HELLO), "capabilities": {**schema.dump(HELLO.capabilities), "cores": 0}},
            "hello.body.capabilities.cores",
        ),
        (
            "hello",
            {**schema.dump(HELLO), "capabilities": "many"},
            "hello.body.capabilities",
        ),
        (
            "heartbeat",
            {**schema.dump(HEARTBEAT), "load": {**schema.dump(HEARTBEAT.load), "cpu_percent": 101}},
            "heartbeat.body.load.cpu_percent",
        ),
        ("heartbeat", {**schema.dump(HEARTBEAT), "heartbeat_interval": 0}, "heartbeat.body"),
        # A NaN write time: SQLite stored it as NULL and refused the batch at every resend.
        (
            "records",
            {
                "stream": "results",
                "from_seq": 1,
                "to_seq": 1,
                "seqs": [1],
                "ts": [math.nan],
                "bodies": [b"\x80"],
            },
            "records.body.ts[0]",
        ),
        (
            "records",
            {
                "stream": "results",
                "from_seq": 1,
                "to_seq": 1,
                "seqs": [1],
                "ts": [math.inf],
                "bodies": [b"\x80"],
            },
            "records.body.ts[0]",
        ),
    ],
)
def test_body_not_matching_its_schema_is_refused(kind: str, body: Any, where: str) -> None:
    error = refused(pack(raw_envelope(kind=kind, body=body)))
    assert error.reason == "schema"
    assert where in str(error)


def test_body_missing_from_envelope_is_refused() -> None:
    envelope = raw_envelope()
    del envelope["body"]
    assert refused(pack(envelope)).reason == "schema"


def test_envelope_with_extra_field_is_refused() -> None:
    error = refused(pack(raw_envelope(extra="x")))
    assert error.reason == "schema"
    assert "extra" in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ts", -1),
        ("ts", 1.5),
        ("ts", "1700000000000"),
        ("ts", True),
        ("ts", None),
        ("id", 7),
        ("id", None),
        ("id", "x" * 65),
    ],
)
def test_bad_header_is_refused(field: str, value: Any) -> None:
    error = refused(pack(raw_envelope(**{field: value})))
    assert error.reason == "schema"
    assert f"envelope.{field}" in str(error)


def test_wire_error_is_a_value_error_with_a_reason() -> None:
    error = WireError("kind", "what went wrong")
    assert isinstance(error, ValueError)
    assert error.reason == "kind"
    assert str(error) == "what went wrong"


# ---------------------------------------------------------------------------- fuzzing


def _decode_only_raises_wire_error(payload: bytes) -> None:
    with contextlib.suppress(WireError):
        wire.decode(payload, kinds=wire.UP_KINDS)


def test_random_bytes_only_raise_wire_error() -> None:
    rng = random.Random(20240601)
    for _ in range(4000):
        size = rng.choice((0, 1, 2, 3, 5, 8, 16, 64, 300))
        _decode_only_raises_wire_error(rng.randbytes(size))


def test_random_msgpack_prefixed_bytes_only_raise_wire_error() -> None:
    # Start with a map header so the decoder gets further than the first byte.
    rng = random.Random(7)
    for _ in range(3000):
        head = bytes([rng.choice((0x80, 0x85, 0x8F, 0xDE, 0xDF))])
        _decode_only_raises_wire_error(head + rng.randbytes(rng.randrange(0, 80)))


def test_mutated_valid_payloads_only_raise_wire_error() -> None:
    rng = random.Random(42)
    seeds = [wire.encode(kind, body, ts_ms=1, msg_id="m") for kind, body in BODIES]
    accepted = 0
    reasons: set[str] = set()
    for _ in range(6000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            action = rng.randrange(4)
            position = rng.randrange(len(data))
            if action == 0:
                data[position] = rng.randrange(256)
            elif action == 1:
                data[position] ^= 1 << rng.randrange(8)
            elif action == 2:
                del data[position : position + rng.randint(1, 8)]
            else:
                data[position:position] = rng.randbytes(rng.randint(1, 8))
            if not data:
                data = bytearray(b"\x00")
        try:
            envelope = wire.decode(bytes(data), kinds=wire.UP_KINDS)
        except WireError as exc:
            reasons.add(exc.reason)
        else:
            accepted += 1
            assert type(envelope.body) is wire.UP_KINDS[envelope.kind]
    assert accepted < 6000  # the mutations did reach the refusals
    assert reasons <= {"oversized", "malformed", "version", "kind", "schema"}
    assert {"malformed", "schema"} <= reasons


def test_mutated_envelope_values_only_raise_wire_error() -> None:
    """Replace one value anywhere in a valid envelope with a random msgpack value."""
    rng = random.Random(99)
    odd_values: list[Any] = [
        None, True, False, 0, -1, 2**63, -(2**63), 1.5, float("nan"), float("inf"), "", "x" * 70,
        b"\x00", [], [1, 2], {}, {"k": "v"}, {"conn": None}, msgpack.ExtType(5, b"xx"),
    ]  # fmt: skip

    def paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        found = [prefix] if prefix else []
        if isinstance(obj, dict):
            for key, value in obj.items():
                found.extend(paths(value, (*prefix, key)))
        return found

    for _ in range(2000):
        kind, body = rng.choice(BODIES)
        envelope = raw_envelope(kind=kind, body=schema.dump(body))
        path = rng.choice(paths(envelope))
        table = envelope
        for key in path[:-1]:
            table = table[key]
        if rng.random() < 0.2:
            del table[path[-1]]
        else:
            table[path[-1]] = rng.choice(odd_values)
        _decode_only_raises_wire_error(pack(envelope))


def _records_envelope(**body: Any) -> bytes:
    base: dict[str, Any] = {
        "stream": "results",
        "from_seq": 1,
        "to_seq": 3,
        "seqs": [1, 3],
        "ts": [1.0, 2.0],
        "bodies": [pack({"a": 1}), pack({"b": 2})],
    }
    base.update(body)
    return pack({"v": 1, "kind": "records", "id": "x", "ts": 1, "body": base})


def test_records_round_trip_keeps_bodies_as_sent() -> None:
    batch = wire.Records.pack("events", 5, 9, [(5, 1.0, {"e": "start"}), (9, 2.0, {"e": "x"})])

    decoded = wire.decode(wire.encode("records", batch), kinds=wire.UP_KINDS).body

    assert decoded == batch
    assert [msgpack.unpackb(b) for b in decoded.bodies] == [{"e": "start"}, {"e": "x"}]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"seqs": [3, 1]}, "records.body.seqs"),
        ({"seqs": [1, 4]}, "records.body.seqs"),
        ({"seqs": [1]}, "records.body"),
        ({"bodies": [pack({"a": 1}), pack([1, 2])]}, "records.body.bodies[1]"),
        ({"bodies": [pack({"a": 1}), b"\x81\xc1"]}, "records.body.bodies[1]"),
        ({"bodies": [pack({"a": 1}), "text"]}, "records.body.bodies[1]"),
        ({"to_seq": 0}, "records.body.to_seq"),
        ({"stream": "logs"}, "records.body.stream"),
    ],
)
def test_records_refusals_name_what_is_wrong(change: dict[str, Any], where: str) -> None:
    with pytest.raises(WireError, match=re.escape(where)) as refused:
        wire.decode(_records_envelope(**change), kinds=wire.UP_KINDS, expected_kind="records")
    assert refused.value.reason == "schema"


def test_an_ack_names_its_store_only_when_it_has_one() -> None:
    """Fields left at their default are left out: an agent from before `numbered_by`
    (which refuses unknown keys) reads every ack a hub sends it."""
    plain = msgpack.unpackb(wire.encode("ack", wire.Ack(stream="results", hwm=7)))["body"]
    named = wire.Ack(stream="results", hwm=7, numbered_by="ab12")
    decoded = wire.decode(wire.encode("ack", named), kinds=wire.DOWN_KINDS, expected_kind="ack")

    assert plain == {"stream": "results", "hwm": 7}
    assert decoded.body == named


def _plain_hello() -> Hello:
    """A hello with every field that may be left out at its default."""
    return Hello(
        conn="c1",
        agent_version="1.0.0",
        profile="generic",
        heartbeat_interval=10.0,
        capabilities=Capabilities(cores=2, memory_bytes=1, disk_bytes=1, accelerator="", arch="x"),
    )


def test_a_hello_names_its_store_only_when_it_has_one() -> None:
    hello = _plain_hello()
    plain = msgpack.unpackb(wire.encode("hello", hello))["body"]
    named = msgspec.structs.replace(hello, store="ab12")

    assert "store" not in plain
    assert msgpack.unpackb(wire.encode("hello", named))["body"]["store"] == "ab12"


def test_an_offer_is_sealed_only_for_a_device_that_checks_seals() -> None:
    """An agent from before seals (which refuses unknown keys) reads every offer a hub
    makes it: the hub seals none for it, and an unsealed offer carries no `seal` key (nor
    `shadows`, when there are none); a hub from before them reads every hello of an agent
    whose `sealed_offers` is off."""
    release = wire.SignedRelease(document=b"doc", signature=b"s" * 64)
    plain = msgpack.unpackb(wire.encode("models", wire.ModelReleases(releases=[release])))
    assert plain["body"] == {"releases": [{"document": b"doc", "signature": b"s" * 64}]}

    seal = wire.OfferSeal(document=b"seal", signature=b"t" * 64)
    sealed = wire.ModelReleases(releases=[release], seal=seal)
    decoded = wire.decode(wire.encode("models", sealed), kinds=wire.DOWN_KINDS)
    assert decoded.body == sealed

    hello = _plain_hello()
    assert "sealed_offers" not in msgpack.unpackb(wire.encode("hello", hello))["body"]
    checking = msgspec.structs.replace(hello, sealed_offers=True)
    assert msgpack.unpackb(wire.encode("hello", checking))["body"]["sealed_offers"] is True


def _nesting(value: Any) -> int:
    """Levels of lists and maps in `value`, by the plain recursive definition."""
    if type(value) is list:
        return 1 + max((_nesting(v) for v in value), default=0)
    if type(value) is dict:
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    return 0


def _random_input(rng: random.Random, levels: int) -> Any:
    pick = rng.random()
    if levels == 0 or pick < 0.25:
        return rng.choice([1, -2.5, "s", None, True, b"x"])
    if pick < 0.7:
        return [_random_input(rng, levels - 1) for _ in range(rng.randint(0, 4))]
    return {str(n): _random_input(rng, levels - 1) for n in range(rng.randint(0, 4))}


def test_an_assignments_input_nested_past_the_limit_is_refused_exactly() -> None:
    """The level-by-level check of an input's nesting agrees with the recursive
    definition on random lists and maps (mixed, ragged, empty), on both sides of the
    limit; rectangular inputs included (the usual shape, on its fast path)."""
    rng = random.Random(20261207)
    limit = wire.MAX_INPUT_DEPTH
    inputs = [_random_input(rng, rng.randint(1, limit + 3)) for _ in range(3000)]
    for depth in (limit - 1, limit, limit + 1):
        row: Any = [1, 2, 3]
        for _ in range(depth - 1):
            row = [row, row]
        inputs.append(row)
    refused = accepted = 0
    for value in inputs:
        if type(value) not in (list, dict):
            continue
        if _nesting(value) > limit:
            with pytest.raises(schema.SchemaError, match="nests deeper"):
                wire.Assignment(
                    task_id="t", attempt=1, model="m", input=value, priority=0,
                    deadline_in_s=1, lease_s=1,
                )  # fmt: skip
            refused += 1
        else:
            wire.Assignment(
                task_id="t", attempt=1, model="m", input=value, priority=0,
                deadline_in_s=1, lease_s=1,
            )  # fmt: skip
            accepted += 1
    # Both sides of the limit were tried.
    assert refused > 50
    assert accepted > 50
