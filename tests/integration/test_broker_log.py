"""The managed broker's log stays bounded: past `broker_log_max_bytes` the hub moves it
aside (one old copy kept) and Mosquitto reopens a new one, which it goes on writing.

Issue 15 item 11: Mosquitto's log grew by about 244 bytes per connection, unrotated.
"""

from __future__ import annotations

import aiomqtt
import pytest

from hub.app import Hub
from hub.broker.managed import log_file
from outpost import tls
from tests.conftest import Enroller
from tests.support import eventually

MAX_BYTES = 64 * 1024


@pytest.fixture
def hub_settings() -> str:
    return f"broker_log_max_bytes = {MAX_BYTES}\n"


async def test_the_broker_log_is_moved_aside_past_its_bound_and_written_afresh(
    hub: Hub, enroll_device: Enroller
) -> None:
    paths, identity = await enroll_device()
    context = tls.client_context(paths.ca_cert, paths.cert, paths.key)
    log = log_file(hub.paths)
    old = log.with_name(log.name + ".1")
    connections = 0

    async def connect_once() -> None:
        nonlocal connections
        async with aiomqtt.Client(
            "127.0.0.1",
            hub.config.mqtt_port,
            identifier=identity.device_id,
            tls_context=context,
            timeout=30,
        ):
            connections += 1

    async def rotated() -> bool:
        for _ in range(20):  # each connection writes a few lines to the broker's log
            await connect_once()
        return old.exists()

    await eventually(rotated, timeout=120, every=0.01, what="the broker's log moved aside")
    assert old.stat().st_size > MAX_BYTES
    await connect_once()

    async def written_afresh() -> bool:
        # The broker's line for the connection made after the move ("... as <CN> (").
        return log.exists() and f" as {identity.device_id} " in log.read_text(errors="replace")

    await eventually(written_afresh, timeout=30, what="Mosquitto writing its new log")
    assert log.stat().st_size < old.stat().st_size
    assert hub.parts.broker is not None
    assert hub.parts.broker.log_rotations >= 1
