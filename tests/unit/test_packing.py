"""Unit tests of outpost/wire/packing.py: compressed record batches and their refusals."""

from __future__ import annotations

import tracemalloc

import msgpack
import msgspec
import pytest

from outpost import wire
from outpost.wire import Packed, WireError, packing
from outpost.wire.packing import zstd

LIMIT = 256 * 1024
BOTH = set(packing.ENCODINGS)


def batch(count: int = 20, first: int = 1) -> wire.Records:
    rows = [
        (seq, 1.78e9 + seq, {"model": "vibration-anomaly", "label": "normal", "n": seq})
        for seq in range(first, first + count)
    ]
    return wire.Records.pack("results", first, first + count - 1, rows)


def packed_body(payload: bytes) -> Packed:
    """The `packed` message's body, decoded as the hub decodes it."""
    envelope = wire.decode(payload, kinds=wire.UP_KINDS, expected_kind="packed")
    assert isinstance(envelope.body, Packed)
    return envelope.body


def refusal(body: Packed, *, accepts: set[str] = BOTH, max_bytes: int = LIMIT) -> WireError:
    with pytest.raises(WireError) as info:
        packing.unpack(body, accepts=accepts, max_bytes=max_bytes)
    return info.value


@pytest.mark.parametrize("encoding", packing.ENCODINGS)
def test_a_packed_batch_unpacks_to_the_same_records(encoding: str) -> None:
    records = batch(200)
    payload = packing.Packer(encoding).pack(records)
    plain = wire.encode("records", records)

    body = packed_body(payload)
    assert body.encoding == encoding
    assert packing.unpack(body, accepts={encoding}, max_bytes=LIMIT) == records
    assert len(payload) < len(plain) / 3


def test_the_dictionary_shrinks_a_small_batch() -> None:
    records = batch(3)
    plain = len(packing.Packer("zstd").pack(records))
    with_dictionary = len(packing.Packer("zstd-dict1").pack(records))
    assert with_dictionary < plain
    assert packing.dictionary().dict_id != 0


def test_the_hub_answers_with_the_offer_it_knows_and_accepts_in_the_devices_order() -> None:
    offer = ["zstd-dict9", "zstd", "zstd-dict1"]
    assert packing.accepted(offer, {"zstd", "zstd-dict1", "zstd-dict9"}) == ["zstd", "zstd-dict1"]
    assert packing.accepted(offer, {"zstd-dict1"}) == ["zstd-dict1"]
    assert packing.accepted(offer, set()) == []
    assert packing.choose(["zstd-dict1", "zstd"], ["zstd", "zstd-dict1"]) == "zstd-dict1"
    assert packing.choose(["zstd-dict1", "zstd"], ["zstd"]) == "zstd"
    assert packing.choose(["zstd"], ["zstd-dict1"]) is None
    assert packing.choose([], ["zstd"]) is None


def test_an_encoding_the_hub_does_not_accept_is_refused() -> None:
    body = packed_body(packing.Packer("zstd-dict1").pack(batch()))
    assert refusal(body, accepts={"zstd"}).reason == "encoding"
    assert refusal(body, accepts=set()).reason == "encoding"
    assert refusal(Packed(encoding="brotli", data=body.data), accepts={"brotli"}).reason == (
        "encoding"
    )
    with pytest.raises(ValueError, match="unknown batch encoding"):
        packing.Packer("lz4")


def test_a_bomb_is_refused_before_it_is_held_whole() -> None:
    # 64 MiB of zeros in a frame of 2 KiB that does not declare its size, with a
    # window the hub allows: only decompressing it says how large it is.
    compressor = zstd.ZstdCompressor(
        options={
            zstd.CompressionParameter.compression_level: 1,
            zstd.CompressionParameter.window_log: 17,
        }
    )
    chunk = bytes(1 << 20)
    data = b"".join(compressor.compress(chunk) for _ in range(64))
    data += compressor.flush()
    assert len(data) < 64 * 1024
    assert zstd.get_frame_info(data).decompressed_size is None

    tracemalloc.start()
    try:
        exc = refusal(Packed(encoding="zstd", data=data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.reason == "oversized"
    assert "decompresses past 262144 bytes" in str(exc)
    assert peak < 4 * LIMIT  # the limit and a byte, not 64 MiB


def test_a_frame_declaring_more_than_the_limit_is_refused_from_its_header() -> None:
    data = zstd.compress(bytes(LIMIT + 1), level=1)
    assert zstd.get_frame_info(data).decompressed_size == LIMIT + 1
    exc = refusal(Packed(encoding="zstd", data=data))
    assert exc.reason == "oversized"
    assert "declares 262145 bytes" in str(exc)


def test_a_frame_asking_for_a_window_past_the_limit_is_refused() -> None:
    # No size declared and a 128 MiB window: a decoder would reserve the window first.
    compressor = zstd.ZstdCompressor(
        options={
            zstd.CompressionParameter.compression_level: 1,
            zstd.CompressionParameter.window_log: 27,
        }
    )
    data = compressor.compress(b"x" * 100) + compressor.flush()
    assert zstd.get_frame_info(data).decompressed_size is None
    exc = refusal(Packed(encoding="zstd", data=data))
    assert exc.reason == "malformed"
    assert "memory" in str(exc)


def test_corrupt_truncated_and_padded_frames_are_malformed() -> None:
    good = packed_body(packing.Packer("zstd").pack(batch(100))).data
    flipped = bytearray(good)
    for i in range(20, len(flipped) - 8, 7):
        flipped[i] ^= 0x5A
    cases = {
        "not zstd": b"\x82\xa1v\x01\xa4kind",
        "empty": b"",
        "flipped": bytes(flipped),
        "truncated": good[: len(good) // 2],
        "two frames": good + good,
    }
    for name, data in cases.items():
        exc = refusal(Packed(encoding="zstd", data=data))
        assert exc.reason == "malformed", name
        assert str(exc).startswith("zstd frame"), name


def test_a_frame_made_with_the_dictionary_is_not_plain_zstd() -> None:
    with_dictionary = packed_body(packing.Packer("zstd-dict1").pack(batch()))
    exc = refusal(Packed(encoding="zstd", data=with_dictionary.data))
    assert exc.reason == "malformed"


def test_what_a_frame_holds_is_checked_as_a_records_body() -> None:
    good = msgspec.msgpack.encode(batch(3))
    backwards = msgspec.msgpack.encode(
        {"stream": "results", "from_seq": 5, "to_seq": 4, "seqs": [], "ts": [], "bodies": []}
    )
    not_a_map = msgpack.packb(
        {"stream": "results", "from_seq": 1, "to_seq": 1, "seqs": [1], "ts": [1.0],
         "bodies": [b"\x01"]},
        use_bin_type=True,
    )  # fmt: skip
    cases = {
        "to_seq": (backwards, "schema", "packed.data.to_seq: must not be below from_seq"),
        "body": (not_a_map, "schema", "packed.data.bodies[0]: not a msgpack map"),
        "garbage": (b"\xc1\xc1", "malformed", "packed.data: not a records body"),
        "unknown stream": (good.replace(b"results", b"secrets"), "schema", "packed.data.stream"),
    }
    for name, (raw, reason, text) in cases.items():
        exc = refusal(Packed(encoding="zstd", data=zstd.compress(raw)))
        assert exc.reason == reason, name
        assert text in str(exc), name


def test_arbitrary_bytes_are_only_ever_refused() -> None:
    # A deterministic sweep of short frames: whatever the bytes, a WireError or a batch.
    good = packed_body(packing.Packer("zstd").pack(batch(5))).data
    reasons: list[str] = []
    for cut in range(len(good)):
        for flip in (0x01, 0x80):
            data = bytearray(good)
            data[cut] ^= flip
            try:
                packing.unpack(
                    Packed(encoding="zstd", data=bytes(data)), accepts=BOTH, max_bytes=LIMIT
                )
            except WireError as exc:
                reasons.append(exc.reason)
    assert reasons  # most flips break the frame
    assert set(reasons) <= {"malformed", "oversized", "schema"}


def test_a_hello_without_an_offer_is_what_an_older_hub_reads() -> None:
    hello = wire.Hello(
        conn="c-1",
        agent_version="0.1.0",
        profile="generic",
        heartbeat_interval=10.0,
        capabilities=wire.Capabilities(cores=2, memory_bytes=1, disk_bytes=1),
    )
    body = msgpack.unpackb(wire.encode("hello", hello))["body"]
    assert "compression" not in body
    offering = msgspec.structs.replace(hello, compression=list(packing.ENCODINGS))
    body = msgpack.unpackb(wire.encode("hello", offering))["body"]
    assert body["compression"] == ["zstd-dict1", "zstd"]


def test_a_hello_offering_names_the_hub_does_not_know_is_still_read() -> None:
    hello = wire.Hello(
        conn="c-1",
        agent_version="9.0.0",
        profile="generic",
        heartbeat_interval=10.0,
        capabilities=wire.Capabilities(cores=2, memory_bytes=1, disk_bytes=1),
        compression=["zstd-dict7", "zstd"],
    )
    decoded = wire.decode(wire.encode("hello", hello), kinds=wire.UP_KINDS).body
    assert packing.accepted(decoded.compression, BOTH) == ["zstd"]


def test_a_welcome_round_trips() -> None:
    welcome = wire.Welcome(conn="c-1", compression=["zstd-dict1"])
    payload = wire.encode("welcome", welcome)
    assert wire.decode(payload, kinds=wire.DOWN_KINDS, expected_kind="welcome").body == welcome
