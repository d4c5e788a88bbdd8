"""`/metrics`: Prometheus text that parses, and counters that move with the fleet."""

from __future__ import annotations

import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.app import Hub
from outpost import tls, wire
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import add_device, eventually


@pytest.fixture
def hub_settings() -> str:
    # These tests poll /metrics; the per-subject rate limit is not what they are about.
    return "api_rate_burst = 100000\n"


HELLO = wire.Hello(
    conn="c1",
    agent_version="test",
    profile="raspberry-pi-4",
    heartbeat_interval=60.0,
    capabilities=wire.Capabilities(cores=4, memory_bytes=1 << 30, disk_bytes=1 << 34),
)


async def _scrape(
    api: ApiClient, token: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = await api.call("GET", "/metrics", token=token)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_metrics_parse_and_move_when_messages_arrive(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    token = await api.token("viewer")
    paths, identity = await enroll_device("raspberry-pi-4")
    before = await _scrape(api, token)
    accepted = ("outpost_hub_messages_total", (("kind", "hello"), ("outcome", "accepted")))
    malformed = (
        "outpost_hub_messages_total",
        (("kind", "hello"), ("outcome", "rejected:malformed")),
    )
    online = ("outpost_hub_devices", (("profile", "raspberry-pi-4"), ("state", "online")))
    offline = ("outpost_hub_devices", (("profile", "raspberry-pi-4"), ("state", "offline")))
    assert before[offline] == 1
    assert before[online] == 0
    assert before.get(accepted, 0) == 0

    context = tls.client_context(paths.ca_cert, paths.cert, paths.key)
    async with aiomqtt.Client(
        "127.0.0.1", hub.config.mqtt_port, identifier=identity.device_id, tls_context=context
    ) as client:
        topic = wire.up_topic(identity.device_id, "hello")
        await client.publish(topic, b"\xc1 junk", qos=1)
        await client.publish(topic, wire.encode("hello", HELLO), qos=1)

        batches = ("outpost_hub_ingest_batch_seconds_count", ())

        async def counted() -> bool:
            # A batch is timed once its answers are out, after its messages are counted;
            # the two messages may come as one batch or two.
            scraped = await _scrape(api, token)
            return scraped.get(accepted, 0) == 1 and scraped.get(batches, 0) >= 1

        await eventually(counted, what="the hello counted in /metrics")
    after = await _scrape(api, token)

    assert after[malformed] == 1
    assert after[online] == 1
    assert after[offline] == 0
    assert after[("outpost_hub_broker_restarts_total", ())] == 0
    http = [k for k in after if k[0] == "outpost_hub_http_request_seconds_count"]
    assert (("method", "GET"), ("route", "/metrics"), ("status", "200")) in [k[1] for k in http]


async def test_device_messages_cannot_mint_new_series(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    token = await api.token("viewer")
    paths, identity = await enroll_device()
    context = tls.client_context(paths.ca_cert, paths.cert, paths.key)
    async with aiomqtt.Client(
        "127.0.0.1", hub.config.mqtt_port, identifier=identity.device_id, tls_context=context
    ) as client:
        for n in range(20):
            await client.publish(wire.up_topic(identity.device_id, f"made-up-{n}"), b"x", qos=1)
        # Then a kind of the contract, malformed: once it is counted, the others would be.
        await client.publish(wire.up_topic(identity.device_id, "heartbeat"), b"x", qos=1)

        async def marker_rejected() -> bool:
            samples = await _scrape(api, token)
            key = (
                "outpost_hub_messages_total",
                (("kind", "heartbeat"), ("outcome", "rejected:malformed")),
            )
            return samples.get(key, 0) == 1

        await eventually(marker_rejected, what="the malformed heartbeat counted")
    samples = await _scrape(api, token)
    kinds = {dict(k[1]).get("kind") for k in samples if k[0] == "outpost_hub_messages_total"}
    assert kinds <= set(wire.UP_KINDS) | {"other"}
    # The made-up kinds never reached the hub: the broker's ACL takes only the contract's.
    assert not any(dict(k[1]).get("kind") == "other" for k in samples), samples


async def test_revoked_devices_are_counted_apart_from_offline_ones(
    hub: Hub, api: ApiClient
) -> None:
    token = await api.token("viewer")
    await add_device(hub, "dev-revoked01", profile="raspberry-pi-4")
    await add_device(hub, "dev-offline01", profile="raspberry-pi-4")

    reply = await api.call(
        "POST", "/api/v1/devices/dev-revoked01/revoke", token=await api.token("admin")
    )
    assert reply.status == 200, reply.body
    samples = await _scrape(api, token)

    online = ("outpost_hub_devices", (("profile", "raspberry-pi-4"), ("state", "online")))
    offline = ("outpost_hub_devices", (("profile", "raspberry-pi-4"), ("state", "offline")))
    revoked = ("outpost_hub_devices_revoked", ())
    # The revoked device is not an offline one (an alert on offline devices would never
    # clear for it): it is counted once, in the revoked gauge.
    assert (samples[online], samples[offline], samples[revoked]) == (0, 1, 1)
    assert (await hub.parts.status_line()).startswith("0 of 1 devices online")
