"""`--broker mqtts://HOST:PORT`: the hub uses a broker it does not run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from edge.enroll import enroll
from edge.identity import DevicePaths
from hub.app import Hub
from hub.broker.managed import BrokerSupervisor
from hub.cli import load_config
from hub.paths import HubPaths
from tests.support import PROFILES, AgentProcess, device_online, eventually, free_port, mint_token


async def test_hub_with_an_external_broker(
    hub_paths: HubPaths, tmp_path: Path, agents: Callable[..., AgentProcess]
) -> None:
    # The "external" broker: a Mosquitto with the fleet's configuration, run by the test.
    port = free_port()
    external = BrokerSupervisor(
        hub_paths, program="mosquitto", host="127.0.0.1", port=port, max_packet_bytes=1 << 18
    )
    await external.start()
    config = load_config(hub_paths.root, overrides={"broker": f"mqtts://127.0.0.1:{port}"})
    hub = Hub(hub_paths, config)
    task = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.ready.wait(), 15)
        assert hub.parts.broker is None, "the hub started a broker of its own"
        await asyncio.wait_for(hub.parts.link.state.connected.wait(), 10)

        device = DevicePaths(tmp_path / "device")
        identity = await enroll(await mint_token(hub), device, PROFILES / "generic.toml")
        assert identity.broker_url == f"mqtts://127.0.0.1:{port}"
        agents(device, heartbeat_interval=0.3)

        await eventually(
            lambda: device_online(hub, identity.device_id), timeout=15, what="device online"
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await external.stop()
