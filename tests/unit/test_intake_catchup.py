"""Drops while the hub catches up do not count toward holds: the broker then hands over
at wire speed what devices sent while the hub was away (its link resumed a session the
broker kept) or its event loop was held; a device still flooding after is held."""

from __future__ import annotations

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from hub.mqtt import link
from hub.mqtt.intake import CATCH_UP_S, STALL_S, Budget, DeviceIntake, queue_type
from outpost import wire

THRESHOLD = 100  # drops within a minute that would hold a device (device_hold_drops)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _send(intake: DeviceIntake, clock: Clock, count: int, per_s: float) -> None:
    """`count` messages of one device, arriving `per_s` a second."""
    for _ in range(count):
        message = aiomqtt.Message(
            wire.up_topic("dev-device001", "records"), b"x" * 100, 1, False, 1, None
        )
        intake.put_nowait(message)
        clock.now += 1 / per_s
        while not intake.empty():  # an ingest that keeps up
            intake.get_nowait()


def _counted(intake: DeviceIntake) -> int:
    (throttled,) = intake.throttled()
    return throttled.counted


def _beating(intake: DeviceIntake, clock: Clock, seconds: float) -> None:
    """The event loop runs for `seconds`, its beat every half second."""
    for _ in range(int(seconds * 2)):
        clock.now += 0.5
        intake.beat()


def test_a_backlog_replayed_after_a_stall_counts_no_drops_toward_a_hold() -> None:
    clock = Clock()
    intake = DeviceIntake(Budget(rate=50, burst=100), clock=clock)
    _beating(intake, clock, 10)
    clock.now += 30  # the loop held: the device's 750 messages (25 a second) wait
    _send(intake, clock, 750, per_s=10_000)  # then come at wire speed
    (throttled,) = intake.throttled()
    assert throttled.dropped >= 600  # dropped over its budget as ever, and shown so
    assert throttled.recent == throttled.dropped
    assert throttled.counted == 0  # but none of that counts toward a hold
    assert intake.catching_up()


def test_a_device_that_floods_on_after_catching_up_is_judged_on_those_drops() -> None:
    clock = Clock()
    intake = DeviceIntake(Budget(rate=50, burst=100), clock=clock)
    _beating(intake, clock, 1)
    clock.now += STALL_S + 1
    _send(intake, clock, 1000, per_s=1000)  # a flood, from the stall on
    assert _counted(intake) == 0
    _beating(intake, clock, CATCH_UP_S)
    assert not intake.catching_up()
    _send(intake, clock, 1000, per_s=1000)  # still flooding: now it counts
    assert _counted(intake) >= THRESHOLD


def test_a_live_flood_counts_and_short_pauses_are_no_stall() -> None:
    clock = Clock()
    intake = DeviceIntake(Budget(rate=50, burst=100), clock=clock)
    _beating(intake, clock, 1)
    clock.now += STALL_S - 1  # a slow batch, not a stall
    _send(intake, clock, 1000, per_s=1000)
    assert not intake.catching_up()
    assert _counted(intake) >= THRESHOLD


def test_without_a_beat_nothing_is_judged_a_stall() -> None:
    """An intake nobody beats for (a tool, a test) cannot tell a stall from an idle
    loop: it judges none."""
    clock = Clock()
    intake = DeviceIntake(Budget(rate=50, burst=100), clock=clock)
    clock.now += 3600
    _send(intake, clock, 1000, per_s=1000)
    assert _counted(intake) >= THRESHOLD


async def test_a_link_that_resumes_its_session_catches_up() -> None:
    """The broker says it kept the hub's session (CONNACK session present): what it
    queued comes next, so the intake catches up; on a fresh session it does not."""
    for present in (False, True):
        intake = DeviceIntake()
        client = aiomqtt.Client("127.0.0.1", 1, queue_type=queue_type(intake))
        link._on_resumed(client, intake.catch_up)
        paho = client._client
        connack = ReasonCode(PacketTypes.CONNACK, "Success")
        assert paho.on_connect is not None
        paho.on_connect(paho, None, mqtt.ConnectFlags(present), connack, None)  # type: ignore[call-arg, arg-type]
        assert intake.catching_up() is present
        assert client._connected.done()  # aiomqtt's own callback still ran
