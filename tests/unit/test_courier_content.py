"""What a device bundle carries, across versions: the agent's status is no longer sent
(the hub had no use for it), and bundles of either side of that change still read."""

from __future__ import annotations

from typing import Any

import msgspec

from outpost import wire
from outpost.courier import content


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
