"""What a replica's broker link says of itself: the Prometheus series of its state, and
the refused shared subscription that ends it (hub/mqtt/listing.py; the refused publish
is proved on a real Mosquitto in tests/integration/test_replica_listing.py)."""

from __future__ import annotations

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, generate_latest

from hub.monitoring.replicametrics import ReplicaCollector
from hub.mqtt import listing


def _exposition(state: str) -> str:
    registry = CollectorRegistry()
    registry.register(
        ReplicaCollector(
            leading=lambda: False,
            conflicts=lambda: 0,
            assigned=lambda: 0,
            intake_queued=lambda: 0,
            broker_link=lambda: state,
        )
    )
    return generate_latest(registry).decode()


@pytest.mark.parametrize("state", ["connected", "unlisted"])
def test_every_link_state_is_a_series_and_only_the_current_one_is_1(state: str) -> None:
    lines = [
        ln for ln in _exposition(state).splitlines() if ln.startswith("outpost_hub_broker_link{")
    ]
    values = {ln.split('"')[1]: float(ln.split()[-1]) for ln in lines}
    assert values == {
        s: (1.0 if s == state else 0.0)
        for s in ("starting", "connected", "disconnected", "unlisted")
    }


async def test_a_refused_shared_subscription_ends_the_link_and_a_granted_one_does_not() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5)
    watch = listing.ListingWatch(client, "outpost-hub-link-r1")
    watch.check_subscription([ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")])
    with pytest.raises(listing.UnlistedError, match=r"refused the subscription \(Not authorized\)"):
        watch.check_subscription([ReasonCode(PacketTypes.SUBACK, "Not authorized")])
