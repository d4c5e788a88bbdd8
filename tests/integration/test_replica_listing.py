"""A hub replica proves the broker's ACL lists it before it joins the devices' shared
subscription (hub/mqtt/listing.py), on a real Mosquitto started with the files
`outpost-hub broker-config` wrote for replicas r1 and r2."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import pytest

from hub.config import HubConfig
from hub.mqtt import listing
from hub.mqtt.ingest import Ingest
from hub.mqtt.intake import DeviceIntake
from hub.mqtt.link import HubLink
from hub.paths import HubPaths, link_cn
from hub.store import HubStore
from outpost import wire
from outpost.aio import cancel_until_done
from outpost.mqtt import LinkState
from tests.integration.test_broker_config import (  # noqa: F401 - fixtures used by name
    Broker,
    _broker_config,
    _client,
    _context,
    _has,
    _heartbeat,
    _publish,
    _receiving,
    _shared,
    _subscribe,
    broker,
    generated,
)
from tests.support import eventually, free_port

HOST = "127.0.0.1"


@pytest.mark.parametrize(("replica", "listed"), [("r1", True), ("r9", False)])
async def test_only_a_replica_the_acl_names_is_listed(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    replica: str,
    listed: bool,
) -> None:
    cn = link_cn(replica)
    why = await listing.unlisted_because(HOST, broker.port, cn, _context(hub_paths, cn))
    # Mosquitto refuses the probe's publish at once (MQTT 5 PUBACK), without the wait.
    assert why == (None if listed else "the broker refused the probe (Not authorized)")


async def test_an_unlisted_replica_waits_and_says_why_until_the_broker_lists_it(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cn = link_cn("r9")
    link = LinkState(logging.getLogger("test.listing"), "hub link")
    context = _context(hub_paths, cn)
    waiting = asyncio.create_task(
        listing.Relisting(HOST, broker.port, "r9", cn, context, link, retry_s=0.2).until_listed()
    )
    try:
        await eventually(_in(link, "unlisted"), timeout=30, what="the refusal")
        assert not waiting.done()
        assert not link.connected.is_set()
        # Said once, loudly; a retry before this line ran says "still" at debug only.
        loud = logging.WARNING
        (said,) = [r for r in caplog.records if r.name == "test.listing" and r.levelno >= loud]
        assert said.levelno == logging.ERROR
        assert "does not list replica r9" in said.getMessage()
        assert "the broker refused the probe (Not authorized)" in said.getMessage()
        assert "outpost-hub broker-config --replica r9" in said.getMessage()

        # The operator's fix, as the message says: the files again with every replica
        # named, and the broker reloaded (Mosquitto reads its ACL again on SIGHUP).
        replicas = ("--replica", "r1", "--replica", "r2", "--replica", "r9")
        listen = ("--listen", f"{HOST}:{broker.port}")
        code = _broker_config(
            hub_paths.root, broker.out, "--kind", "mosquitto", "--force", *listen, *replicas
        )
        assert code == 0
        broker.process.send_signal(signal.SIGHUP)
        await asyncio.wait_for(waiting, timeout=60)
    finally:
        await cancel_until_done(waiting)


async def test_an_unlisted_replica_takes_no_share_of_the_devices_messages(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """The hazard itself: r9, unlisted, runs its real link beside r1 (a listed replica's
    subscription, made by the test); every heartbeat still reaches r1."""
    config = HubConfig(
        replica_id="r9",
        broker=f"mqtts://{HOST}:{broker.port}",
        db_url="postgresql://replicas.example/outpost",  # the link never reads it
    )
    store = await asyncio.to_thread(HubStore, hub_paths.database)
    ingest = Ingest(store, max_payload_bytes=config.max_payload_bytes)
    link = HubLink(hub_paths, config, ingest, DeviceIntake())
    running = asyncio.create_task(link.run())
    cn = link_cn("r1")
    own_down = wire.down_topic(cn, "marker")
    try:
        await asyncio.wait_for(link.started(), 30)  # started, as far as it can
        assert link.state.state == "unlisted"
        async with (
            _client(broker, hub_paths, cn) as r1,
            _client(broker, hub_paths, "dev-a") as device,
            _receiving(r1) as inbox,
        ):
            await _subscribe(r1, _shared(hub_paths))
            await _subscribe(r1, wire.down_topic(cn, "#"))
            for n in range(20):
                await _publish(device, _heartbeat("dev-a"), b"beat-%d" % n)
            await _publish(r1, own_down, b"done")  # queued after the beats
            await eventually(lambda: _has(inbox, own_down), timeout=30, what="the marker")
        assert inbox.payloads(_heartbeat("dev-a")) == [b"beat-%d" % n for n in range(20)]
        assert link.state.state == "unlisted"
    finally:
        await cancel_until_done(running)
        store.close()


async def test_a_replica_the_broker_stops_listing_leaves_the_group_until_listed_again(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """r1 runs its real link, listed; the broker's files are written again without it
    and reloaded (an operator adding a replica and naming only the new one): r1 notices
    on its live link, leaves the share group (every heartbeat then reaches r2), says
    why, and rejoins once the files name it again."""
    monkeypatch.setattr(listing, "RECHECK_S", 0.2)
    monkeypatch.setattr(listing, "RETRY_S", 0.2)
    config = HubConfig(
        replica_id="r1",
        broker=f"mqtts://{HOST}:{broker.port}",
        db_url="postgresql://replicas.example/outpost",  # the link never reads it
    )
    store = await asyncio.to_thread(HubStore, hub_paths.database)
    ingest = Ingest(store, max_payload_bytes=config.max_payload_bytes)
    link = HubLink(hub_paths, config, ingest, DeviceIntake())
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.state.connected.wait(), 30)

        # Listed, its probes pass and the link stays up.
        watch = link._watch
        assert watch is not None

        async def probed() -> bool:
            return watch.probes >= 3

        await eventually(probed, timeout=30, what="three probes")
        assert link.state.state == "connected"

        _reload(broker, hub_paths, "r2")  # r1 left out
        await eventually(_in(link.state, "unlisted"), timeout=30, what="the refusal")
        said = link.state.detail  # as logged (the CLI run above took the log's handlers)
        assert "does not list replica r1" in said
        assert "the broker refused a publish (Not authorized)" in said
        assert "outpost-hub broker-config --replica r1" in said

        cn = link_cn("r2")
        async with (
            _client(broker, hub_paths, cn) as r2,
            _client(broker, hub_paths, "dev-a") as device,
            _receiving(r2) as inbox,
        ):
            await _subscribe(r2, _shared(hub_paths))
            await _subscribe(r2, wire.down_topic(cn, "#"))
            for n in range(20):
                await _publish(device, _heartbeat("dev-a"), b"beat-%d" % n)
            await _publish(r2, wire.down_topic(cn, "marker"), b"done")  # after the beats
            await eventually(
                lambda: _has(inbox, wire.down_topic(cn, "marker")), timeout=30, what="marker"
            )
        assert inbox.payloads(_heartbeat("dev-a")) == [b"beat-%d" % n for n in range(20)]
        assert link.state.state == "unlisted"

        _reload(broker, hub_paths, "r1", "r2")  # the fix
        await eventually(_in(link.state, "connected"), timeout=60, what="the link back")
    finally:
        await cancel_until_done(running)
        store.close()


class GatedIngest:
    """Holds the first batch that holds `first` until `gate` opens; keeps what it
    handled, and any batch a cancel cut short."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.gate = asyncio.Event()
        self.handled: list[bytes] = []
        self.cut: list[list[bytes]] = []
        self.held = 0

    async def handle_batch(self, batch: Sequence[tuple[str, bytes]]) -> None:
        payloads = [payload for _, payload in batch]
        try:
            if self.first in payloads:
                self.held += 1
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cut.append(payloads)
            raise
        self.handled += payloads


async def test_what_a_replica_took_before_it_was_found_unlisted_is_stored_not_dropped(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One batch in the ingest and nine queued behind it when the broker stops listing
    r1: the link ends as a broker's disconnect would end it, after all ten are stored
    (the broker acknowledged them to their device: nobody sends them again)."""
    monkeypatch.setattr(listing, "RECHECK_S", 0.2)
    monkeypatch.setattr(listing, "RETRY_S", 0.5)
    config = HubConfig(
        replica_id="r1",
        broker=f"mqtts://{HOST}:{broker.port}",
        db_url="postgresql://replicas.example/outpost",  # the link never reads it
    )
    sent = [b"beat-%d" % n for n in range(10)]
    ingest = GatedIngest(sent[0])
    intake = DeviceIntake()
    link = HubLink(hub_paths, config, cast(Ingest, ingest), intake)
    running = asyncio.create_task(link.run())
    try:
        async with _client(broker, hub_paths, "dev-a") as device:
            # Connected is not subscribed (the link probes its listing first):
            # heartbeats until one comes through.
            async def subscribed() -> bool:
                await _publish(device, _heartbeat("dev-a"), b"ready")
                return b"ready" in ingest.handled

            await eventually(subscribed, timeout=30, every=0.2, what="the subscription")
            await _publish(device, _heartbeat("dev-a"), sent[0])

            async def first_held() -> bool:
                return ingest.held == 1

            await eventually(first_held, timeout=30, what="the first batch")
            for payload in sent[1:]:
                await _publish(device, _heartbeat("dev-a"), payload)

            async def nine_queued() -> bool:
                return intake.qsize() == 9

            await eventually(nine_queued, timeout=30, what="nine queued")
        _reload(broker, hub_paths, "r2")  # r1 left out
        watch = link._watch
        assert watch is not None

        async def refused() -> bool:
            return bool(watch.refused)

        await eventually(refused, timeout=30, what="the refusal")  # the batch still held
        ingest.gate.set()
        await eventually(_in(link.state, "unlisted"), timeout=30, what="the link ended")
        assert ingest.cut == []
        assert sorted(p for p in ingest.handled if p != b"ready") == sorted(sent)
        assert intake.qsize() == 0
    finally:
        await cancel_until_done(running)


def _reload(broker: Broker, hub_paths: HubPaths, *replicas: str) -> None:  # noqa: F811
    """The broker's files written again naming `replicas`, and the broker reloaded
    (Mosquitto reads its ACL again on SIGHUP)."""
    named = [arg for replica in replicas for arg in ("--replica", replica)]
    listen = ("--listen", f"{HOST}:{broker.port}")
    code = _broker_config(
        hub_paths.root, broker.out, "--kind", "mosquitto", "--force", *listen, *named
    )
    assert code == 0
    broker.process.send_signal(signal.SIGHUP)


async def test_a_broker_out_of_reach_is_a_link_down_not_a_refusal(
    hub_paths: HubPaths, caplog: pytest.LogCaptureFixture
) -> None:
    cn = link_cn("r1")
    link = LinkState(logging.getLogger("test.listing"), "hub link")
    port = free_port()  # nothing listens there
    waiting = asyncio.create_task(
        listing.Relisting(HOST, port, "r1", cn, _context(hub_paths, cn), link).until_listed()
    )
    try:
        await eventually(_in(link, "disconnected"), timeout=30, what="a failure")
        assert not waiting.done()
        # Said once, loudly; a retry before this line ran says "still" at debug only.
        loud = logging.WARNING
        (said,) = [r for r in caplog.records if r.name == "test.listing" and r.levelno >= loud]
        assert f"{HOST}:{port}" in said.getMessage()
    finally:
        await cancel_until_done(waiting)


def _in(link: LinkState, state: str) -> Callable[[], Awaitable[bool]]:
    async def entered() -> bool:
        return link.state == state

    return entered


async def test_a_probe_taken_and_never_delivered_is_a_refusal_too(
    broker: Broker,  # noqa: F811 - the fixture
    hub_paths: HubPaths,
) -> None:
    """A broker that acknowledges what it then drops (as MQTT 3.1.1 brokers do): the
    read-back decides. Here the probe's topic is not subscribed, so nothing comes."""
    cn = link_cn("r1")
    async with _client(broker, hub_paths, cn) as client:
        await client.publish(wire.down_topic(cn, listing.PROBE_KIND), b"nonce", qos=1)
        why = await listing._came_back(client, b"nonce", [], 0.5)
    assert why == "the broker took the probe and did not deliver it within 0.5 s"
