"""The hub reads a device's roll-up the same whichever of its two readers does it
(hub/store/rollupread.py): the typed one, checked in C against the shape agents write,
and the loose one, field by field, which keeps what is well formed of anything else.

Roll-ups here are made by the agent's own tally, then mutated: fields replaced by any
value a record can hold, removed, or the bytes themselves damaged.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from edge.rollup import Tally, record
from hub.store import rollupread
from outpost import rollup, wire
from tests.fuzz.conftest import count
from tests.fuzz.test_parsers import EDITS, VALUES, mutate

NAMES = st.sampled_from(["vibration-anomaly", "m", "a@b", "x" * 129, "", "@1"])
VERSIONS = st.sampled_from(["1.0.0", "2", "", "v" * 129])
LABELS = st.text(max_size=8) | st.sampled_from(["ok", "crack", rollup.OTHER, "l" * 129])
INFERENCES = st.tuples(
    NAMES,
    VERSIONS,
    LABELS,
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=5000.0),
)
REASONS = st.sampled_from([*rollup.ERROR_REASONS, "made-up"])
FILLS = st.floats(min_value=0.0, max_value=1.5)


@st.composite
def agent_rollups(draw: st.DrawFn, fitting: bool = False) -> dict[str, Any]:
    """A roll-up as an agent writes it (edge/rollup.py); `fitting`: names within the
    hub's bounds, so nothing of it is cut."""
    tally = Tally()
    inferences = draw(st.lists(INFERENCES, max_size=30))
    if fitting:
        inferences = [i for i in inferences if len(i[0]) <= 128 and len(i[1]) <= 128]
        inferences = [(n or "m", v, label[:128], c, ms) for n, v, label, c, ms in inferences]
    for name, version, label, confidence, latency_ms in inferences:
        tally.inference(name, version, label, confidence, latency_ms)
    for reason in draw(st.lists(REASONS, max_size=4)):
        tally.error(reason)
    models, errors = tally.take()
    # The agent's own record (edge.rollup.record): a field agents start to write shows
    # here, and must be declared in the typed reader's shape.
    return record(
        period_s=60.0,
        load=wire.Load(cpu_percent=12.0, memory_percent=30.0, disk_percent=40.0, rss_bytes=1),
        store={
            "streams": {
                s: {"records": 10, "bytes": 4000, "fill": draw(FILLS)}
                for s in ("results", "events", "metrics")
            }
        },
        tasks={"done": 3, "failed": 0, "queued": draw(st.integers(0, 9)), "running": 1},
        models=models,
        errors=errors,
    )


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a decoded record a value sits at (map keys, list indexes)."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*path, index))
    return found


@st.composite
def damaged_rollups(draw: st.DrawFn) -> dict[str, Any]:
    """An agent's roll-up with one to three of its values replaced or removed."""
    record = draw(agent_rollups())
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(record)
        if not paths:
            break
        *parent_path, last = draw(st.sampled_from(paths))
        parent: Any = record
        for step in parent_path:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[last]
        else:
            parent[last] = draw(VALUES | st.sampled_from([0, -1, 2**41, True, float("nan")]))
    return record


def _same_reading(body: bytes) -> None:
    typed, loose = rollupread.read(body), rollupread.read_loosely(body)
    # Compared as encoded, so that a NaN the shadow section carries compares equal.
    assert msgspec.msgpack.encode(typed) == msgspec.msgpack.encode(loose), (typed, loose)


@given(agent_rollups(fitting=True))
def test_what_agents_write_is_read_by_the_typed_reader(record: dict[str, Any]) -> None:
    count("rollupread (agent's)")
    body = msgspec.msgpack.encode(record)
    rollupread._DECODER.decode(body)  # would raise if it fell to the loose reader
    _same_reading(body)


@given(agent_rollups())
def test_an_agents_roll_up_with_names_too_long_is_read_alike(record: dict[str, Any]) -> None:
    count("rollupread (long names)")
    _same_reading(msgspec.msgpack.encode(record))


@given(damaged_rollups())
def test_a_roll_up_with_values_replaced_or_removed_is_read_alike(record: dict[str, Any]) -> None:
    count("rollupread (damaged values)")
    _same_reading(msgspec.msgpack.encode(record))


@given(agent_rollups(), EDITS)
def test_a_roll_up_with_damaged_bytes_is_read_alike(record: dict[str, Any], edits: Any) -> None:
    count("rollupread (damaged bytes)")
    _same_reading(mutate(msgspec.msgpack.encode(record), edits))


def test_zero_counts_and_unknown_buckets_are_left_out_as_the_loose_reader_leaves_them() -> None:
    stats = {
        "count": 3,
        "latency_ms": {"0.5": 2, "0.7": 1, "+Inf": 0},
        "latency_sum_ms": 1.0,
        "confidence": [0, 0, 0, 0, 0, 0, 0, 0, 1, 2],
        "confidence_sum": 2.7,
        "labels": {"ok": 3, "crack": 0},
    }
    body = msgspec.msgpack.encode(
        {"kind": "rollup", "models": {"m@1": stats, "n@1": {**stats, "count": 0}}}
    )
    read = rollupread.read(body)
    assert read is not None
    assert read.models == {
        "m@1": {**stats, "latency_ms": {"0.5": 2}, "labels": {"ok": 3}},
    }
    _same_reading(body)


def test_a_record_that_is_not_a_roll_up_is_not_read() -> None:
    for body in (
        msgspec.msgpack.encode({"kind": "gauge", "value": 1}),
        msgspec.msgpack.encode(["rollup"]),
        b"rollup\xc1",
    ):
        assert rollupread.read(body) is None
        assert rollupread.read_loosely(body) is None
