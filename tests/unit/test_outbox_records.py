"""A device's record becomes an event's JSON whatever msgpack carried: bytes, keys that
JSON cannot name, non-finite numbers; none of it may fail the ingest that stores it."""

from __future__ import annotations

import json

import msgspec

from hub.store.outbox import _text, records


def test_record_events_carry_the_record_as_json() -> None:
    body = msgspec.msgpack.encode({"label": "normal", "scores": [0.5, 0.5], "raw": b"\x00\x01"})
    ((kind, subject, data, at),) = records("dev-1", "results", [(7, 1.5, body)], now=2.0)
    assert (kind, subject, at) == ("record.result", "dev-1", 2.0)
    assert json.loads(_text(data)) == {
        "stream": "results",
        "seq": 7,
        "ts": 1.5,
        "record": {"label": "normal", "scores": [0.5, 0.5], "raw": "AAE="},
    }


def test_values_json_cannot_hold_are_written_not_refused() -> None:
    odd = msgspec.msgpack.encode({b"key": {1: float("nan")}, "inf": float("inf")})
    ((_, _, data, _),) = records("dev-1", "events", [(1, 0.0, odd)], now=0.0)
    written = json.loads(_text(data))
    assert written["record"] == {"a2V5": {"1": None}, "inf": None}  # JSON has no NaN
    broken = records("dev-1", "results", [(2, 0.0, b"\xc1")], now=0.0)  # not msgpack at all
    assert json.loads(_text(broken[0][2]))["record"] == "wQ=="
