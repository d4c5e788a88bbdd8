"""The hub's per-device intake and its sampled refusal log, on a fake clock."""

from __future__ import annotations

import collections
import logging

import aiomqtt
import pytest

from hub.mqtt.intake import THROTTLED_FOR_S, Budget, DeviceIntake
from hub.mqtt.rejections import RejectionLog
from outpost import wire


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _message(device: str, kind: str = "heartbeat", size: int = 10) -> aiomqtt.Message:
    return aiomqtt.Message(wire.up_topic(device, kind), b"x" * size, 0, False, 1, None)


def _devices(intake: DeviceIntake) -> list[str]:
    out = []
    while not intake.empty():
        out.append(intake.get_nowait().topic.value.split("/")[3])
    return out


def test_devices_are_drained_round_robin_whatever_one_has_queued() -> None:
    intake = DeviceIntake(Budget(burst=1000, rate=1), clock=Clock())
    for _ in range(100):
        intake.put_nowait(_message("dev-flooder"))
    intake.put_nowait(_message("dev-honest01"))
    order = _devices(intake)
    assert order.index("dev-honest01") == 1  # second: after one of the flooder's
    assert len(order) == 101


def test_past_its_budget_a_device_loses_only_its_own_messages() -> None:
    clock = Clock()
    dropped: collections.Counter[tuple[str, str]] = collections.Counter()
    intake = DeviceIntake(Budget(rate=10, burst=20), dropped=dropped, clock=clock)
    for _ in range(50):
        intake.put_nowait(_message("dev-flooder"))
    intake.put_nowait(_message("dev-honest01"))
    assert _devices(intake).count("dev-flooder") == 20
    assert dropped == {("heartbeat", "dropped:rate"): 30}
    clock.now += 1.0  # ten more allowed a second later
    for _ in range(50):
        intake.put_nowait(_message("dev-flooder", kind="made-up"))
    assert intake.qsize() == 10
    assert dropped[("other", "dropped:rate")] == 40  # a kind outside the contract: "other"
    (throttled,) = intake.throttled()
    assert (throttled.device_id, throttled.dropped) == ("dev-flooder", 70)
    clock.now += THROTTLED_FOR_S + 1
    assert intake.throttled() == []


def test_bytes_and_queue_length_are_bounded_too() -> None:
    intake = DeviceIntake(Budget(bytes_burst=1000, bytes_rate=1, queued=5), clock=Clock())
    intake.put_nowait(_message("dev-big00001", size=2000))
    for _ in range(10):
        intake.put_nowait(_message("dev-many0001"))
    assert intake.qsize() == 5
    assert dict(intake.dropped) == {
        ("heartbeat", "dropped:bytes"): 1,
        ("heartbeat", "dropped:queue"): 5,
    }


def test_refusals_are_logged_a_few_per_device_per_window_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RejectionLog(logging.getLogger("t"), per_window=3, window_s=60, clock=clock)
    caplog.set_level(logging.WARNING)
    for _ in range(100):
        log.refused("dev-a", "outpost/v1/dev/dev-a/up/hello", "schema", "y" * 100_000)
    log.refused("dev-b", "outpost/v1/dev/dev-b/up/hello", "schema", "short")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "rejected message on outpost/v1/dev/dev-a/up/hello"
    ] * 3 + ["rejected message on outpost/v1/dev/dev-b/up/hello"]
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    caplog.clear()
    clock.now += 61
    log.refused("dev-a", "outpost/v1/dev/dev-a/up/hello", "schema", "again")
    assert "97 more messages from dev-a were refused" in caplog.records[0].getMessage()
    assert "again" in caplog.records[1].getMessage()


def test_recent_drops_are_those_of_the_last_minute() -> None:
    """`recent` (what hub/mqtt/holds.py judges by) counts a burst of drops at once, keeps
    counting it for a minute, and forgets it after two."""
    clock = Clock()
    intake = DeviceIntake(Budget(rate=1, burst=1), clock=clock)
    for _ in range(501):  # one taken, 500 dropped
        intake.put_nowait(_message("dev-flooder"))
    (throttled,) = intake.throttled()
    assert throttled.recent == 500
    clock.now += 30
    assert intake.throttled()[0].recent >= 250  # the window slid, part of it still in
    clock.now += 90
    assert intake.throttled()[0].recent == 0
    assert intake.throttled()[0].dropped == 500  # the total stays
