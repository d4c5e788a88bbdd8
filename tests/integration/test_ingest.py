"""Bad payloads from an authenticated device: each refused with a logged reason, and the
hub goes on serving the next valid message."""

from __future__ import annotations

import logging

import aiomqtt
import msgpack
import pytest

from hub.app import Hub
from outpost import tls, wire
from tests.conftest import Enroller
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.support import eventually

HELLO = wire.Hello(
    conn="c1",
    agent_version="test",
    profile="generic",
    heartbeat_interval=60.0,
    capabilities=wire.Capabilities(cores=2, memory_bytes=1 << 30, disk_bytes=1 << 34),
)


def _envelope(**change: object) -> bytes:
    envelope = msgpack.unpackb(wire.encode("hello", HELLO))
    envelope.update(change)
    packed: bytes = msgpack.packb(envelope)
    return packed


BAD_PAYLOADS = {
    "malformed": b"\xc1\xc1 not msgpack",
    "truncated": wire.encode("hello", HELLO)[:-5],
    "not a map": msgpack.packb([1, 2, 3]),
    "wrong version": _envelope(v=2),
    "wrong kind": _envelope(kind="heartbeat"),
    "bad body type": _envelope(
        body={**msgpack.unpackb(wire.encode("hello", HELLO))["body"], "heartbeat_interval": "soon"}
    ),
    "unknown body field": _envelope(
        body={**msgpack.unpackb(wire.encode("hello", HELLO))["body"], "admin": True}
    ),
    "oversized": b"\x00" * (300 * 1024),
}
EXPECTED_REASON = {
    "malformed": "malformed",
    "truncated": "malformed",
    "not a map": "malformed",
    "wrong version": "version",
    "wrong kind": "kind",
    "bad body type": "schema",
    "unknown body field": "schema",
    "oversized": "oversized",
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
async def test_bad_payload_is_rejected_with_reason_and_hub_keeps_serving(
    hub: Hub, enroll_device: Enroller, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    paths, identity = await enroll_device()
    context = tls.client_context(paths.ca_cert, paths.cert, paths.key)
    topic = wire.up_topic(identity.device_id, "hello")

    with caplog.at_level(logging.WARNING, logger="hub.mqtt.ingest"):
        async with aiomqtt.Client(
            "127.0.0.1",
            hub.config.mqtt_port,
            identifier=identity.device_id,
            tls_context=context,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await client.publish(topic, BAD_PAYLOADS[case], qos=1)
            await client.publish(topic, wire.encode("hello", HELLO), qos=1)

            async def valid_one_accepted() -> bool:
                return hub.parts.ingest.outcomes[("hello", "accepted")] == 1

            await eventually(valid_one_accepted, what="the valid hello after the bad one")

    reason = EXPECTED_REASON[case]
    assert hub.parts.ingest.outcomes[("hello", f"rejected:{reason}")] == 1
    rejections = [r for r in caplog.records if "rejected message" in r.getMessage()]
    assert len(rejections) == 1
    assert reason in rejections[0].getMessage()
    assert identity.device_id in rejections[0].getMessage()
    device = await hub.parts.store.device(identity.device_id)
    assert device is not None
    assert device.online
    assert device.capabilities["cores"] == 2
