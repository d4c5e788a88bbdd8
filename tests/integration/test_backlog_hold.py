"""A device that kept within its budget is not held off when the broker replays its
backlog to the hub at wire speed; one that floods live is, as before.

The intake sees the broker's delivery rate, not the device's sending rate. Here the
hub's event loop is held while an honest device sends at half its message rate (a
restart against a broker that kept the hub's session replays the same way): the broker
then hands over everything at once, the intake drops what passes the budget, and those
drops once held the device off, its session ended. Now they count toward no hold while
the hub catches up (hub/mqtt/intake.py); the same device flooding afterwards is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import aiomqtt
import pytest

from edge.identity import DevicePaths
from hub.app import Hub
from hub.mqtt import intake as intake_module
from outpost import tls, wire
from outpost.aio import taken
from tests.conftest import Enroller
from tests.support import eventually

RATE = 100  # the device's budget, messages a second
HOLD_DROPS = 150  # device_hold_drops
SENT = 350  # the honest device's messages while the hub's loop is held ...
SEND_PER_S = 50.0  # ... at half its rate: seven seconds at least, past the intake's STALL_S
# The catch-up, shortened so the live flood comes sooner; still far longer than reading
# a few hundred messages takes on a slow machine.
CATCH_UP_S = 15.0
JUNK = b"\x81\xa1v\x01" + b"x" * 200  # not a valid envelope: dropped or refused alike


@pytest.fixture
def hub_settings() -> str:
    return (
        f"device_msgs_per_s = {RATE}\ndevice_msgs_burst = 10\n"
        f"device_hold_drops = {HOLD_DROPS}\ndevice_hold_s = 60\n"
    )


def _client(port: int, paths: DevicePaths, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        tls_context=tls.client_context(paths.ca_cert, paths.cert, paths.key),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=10,
    )


def _send_honestly(port: int, paths: DevicePaths, device_id: str) -> None:
    """Send SENT messages, none sooner than 1/SEND_PER_S after the one before: the same
    unacknowledged batch, resent, as an agent does."""
    batch = wire.Records(
        stream="events", from_seq=1, to_seq=1, seqs=[1], ts=[time.time()], bodies=[b"\x80"]
    )
    payload = wire.encode("records", batch)

    async def main() -> None:
        async with _client(port, paths, device_id) as client:
            for _ in range(SENT):
                await client.publish(wire.up_topic(device_id, "records"), payload, qos=1)
                await asyncio.sleep(1 / SEND_PER_S)  # the pace of an honest device

    asyncio.run(main())


async def test_a_replayed_backlog_holds_no_one_and_a_live_flood_still_does(
    hub: Hub, enroll_device: Enroller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "CATCH_UP_S", CATCH_UP_S)
    paths, identity = await enroll_device()
    device_id = identity.device_id
    intake, holds = hub.parts.intake, hub.parts.holds
    port = hub.config.mqtt_port
    messages = intake.dropped  # the hub's one counter: the intake's drops, the ingest's outcomes

    # The hub's loop is held while the device sends (the loop's beat, as
    # hub/mqtt/holds.py gives it every half second, ran just before).
    intake.beat()
    sender = threading.Thread(target=_send_honestly, args=(port, paths, device_id))
    sender.start()
    sender.join()  # on the event loop: the stall

    async def all_seen() -> bool:
        return sum(v for (kind, _), v in messages.items() if kind == "records") >= SENT

    await eventually(all_seen, timeout=60, what="the backlog read by the hub")
    (throttled,) = intake.throttled()
    assert throttled.device_id == device_id
    assert throttled.dropped >= HOLD_DROPS, "the replay did not look like a flood"
    assert throttled.counted < HOLD_DROPS
    assert holds.over_threshold() == []
    assert device_id not in holds.held
    assert device_id not in await hub.parts.store.holds(time.time())

    # Once caught up, the same device floods: it is held off and its connection ended.
    async def caught_up() -> bool:
        return not intake.catching_up()

    await eventually(caught_up, timeout=CATCH_UP_S + 30, what="the catch-up over")
    flood = _client(port, paths, device_id)
    ended = None
    await flood.__aenter__()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                for _ in range(200):
                    await flood.publish(wire.up_topic(device_id, "heartbeat"), JUNK, qos=0)
                await flood.publish(wire.up_topic(device_id, "heartbeat"), JUNK, qos=1)
            except aiomqtt.MqttError as exc:
                ended = exc
                break
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await flood.__aexit__(None, None, None)
        taken(flood._disconnected)
    assert ended is not None, "the live flooder's connection was never ended"
    assert device_id in holds.held
