"""What a device bundle carries, across versions: the agent's status is no longer sent
(the hub had no use for it), and bundles of either side of that change still read."""

from __future__ import annotations

from typing import Any

import msgspec

from outpost import wire
from outpost.courier import content, history


class _OlderDeviceContent(msgspec.Struct, frozen=True):
    """A device bundle as hubs of 0.1.0 read it: `status` required."""

    batches: list[wire.Records]
    aligned: list[str]
    store_id: str
    agent_version: str
    status: dict[str, Any]


def test_a_device_bundle_carries_no_status() -> None:
    carried = content.DeviceContent(batches=[], aligned=[], store_id="s", agent_version="1")
    decoded = msgspec.msgpack.decode(content.encode(carried))
    assert decoded["status"] == {}  # an empty placeholder, nothing of the agent's


def test_an_older_hub_reads_a_newer_bundle_and_the_other_way_round() -> None:
    newer = content.encode(
        content.DeviceContent(batches=[], aligned=["results"], store_id="s", agent_version="2")
    )
    read = msgspec.msgpack.decode(newer, type=_OlderDeviceContent)
    assert (read.aligned, read.status) == (["results"], {})
    older = msgspec.msgpack.encode(
        _OlderDeviceContent([], [], "s", "1", status={"uptime_s": 12.5, "tasks": {"done": 3}})
    )
    assert content.decode_device(older).agent_version == "1"


def _batch(stream: str, ts: list[float], bodies: list[dict[str, Any]]) -> wire.Records:
    seqs = list(range(1, len(ts) + 1))
    return wire.Records(
        stream=stream,  # type: ignore[arg-type]  # a literal, from the tests' own table
        from_seq=1,
        to_seq=seqs[-1],
        seqs=seqs,
        ts=ts,
        bodies=[msgspec.msgpack.encode(b) for b in bodies],
    )


def test_the_history_summarises_load_samples_and_restarts() -> None:
    rollups = [{"kind": "rollup", "period_s": 60, "load": {"cpu_percent": c}} for c in (10, 50, 30)]
    events = [{"event": "agent.started"}, {"event": "link.lost"}, {"event": "agent.started"}]
    found = history.summarise(
        [
            _batch("results", [1000.0, 4600.0], [{"n": 1}, {"n": 2}]),
            _batch("metrics", [1060.0, 1120.0, 1180.0], rollups),
            _batch("events", [990.0, 1500.0, 2000.0], events),
        ]
    )
    assert found == history.History(
        since=990.0,
        until=4600.0,
        samples=3,
        restarts=2,
        cpu_min=10.0,
        cpu_max=50.0,
        cpu_mean=30.0,
    )
    said = found.describe()
    assert "(1.0 h)" in said
    assert "3 load samples, CPU 10-50% (mean 30%), 2 restarts" in said
    carried = content.DeviceContent(
        batches=[], aligned=[], store_id="s", agent_version="2", history=found
    )
    assert content.decode_device(content.encode(carried)).history == found


def test_no_records_no_history() -> None:
    assert history.summarise([]) is None
    found = history.summarise([_batch("events", [5.0], [{"event": "link.lost"}])])
    assert found is not None
    assert (found.samples, found.restarts, found.cpu_mean) == (0, 0, None)
    assert "at 1970-01-01 00:00 UTC: 0 load samples, 0 restarts" in found.describe()
