"""One daemon per data folder: a second hub or agent on a folder in use is refused at
once, naming the one that runs, and touches nothing of it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from hub.app import Hub
from hub.broker.managed import pid_file
from tests.support import REPO, AgentProcess, device_online, eventually


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


async def test_a_second_hub_on_a_folder_in_use_is_refused_and_the_first_keeps_serving(
    hub: Hub, enroll_device, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    agents(paths, heartbeat_interval=0.3)
    await eventually(lambda: device_online(hub, identity.device_id), timeout=30, what="online")
    broker = hub.paths.broker_dir
    before = {p.name: p.stat().st_mtime_ns for p in broker.iterdir() if p.is_file()}
    assert "mosquitto.pid" in before

    second = _command("hub.cli", "run", "--data", str(hub.paths.root))

    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"outpost-hub: error: another outpost-hub (pid {os.getpid()}) is running on "
        f"{hub.paths.root}"
    )
    assert "Traceback" not in second.stderr
    after = {p.name: p.stat().st_mtime_ns for p in broker.iterdir() if p.is_file()}
    # Nothing of the running hub's was rewritten or deleted (its broker's log grows).
    assert {k: v for k, v in after.items() if k != "mosquitto.log"} == {
        k: v for k, v in before.items() if k != "mosquitto.log"
    }
    assert hub.parts.broker is not None
    assert int(pid_file(hub.paths).read_text()) == hub.parts.broker.pid
    # ...and it still serves: the device's heartbeats still arrive.
    seen = (await hub.parts.store.devices())[0].last_heartbeat
    assert seen is not None

    async def newer_heartbeat() -> bool:
        return any(
            d.device_id == identity.device_id and (d.last_heartbeat or 0) > seen
            for d in await hub.parts.store.devices()
        )

    await eventually(newer_heartbeat, timeout=30, what="a heartbeat after the refusal")
    # Commands that go through the database work beside the daemon.
    listed = _command("hub.cli", "devices", "--data", str(hub.paths.root), "--json")
    assert listed.returncode == 0, listed.stderr
    assert identity.device_id in listed.stdout


async def test_a_second_agent_on_a_folder_in_use_is_refused_and_the_first_keeps_running(
    hub: Hub, enroll_device, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    first = agents(paths, heartbeat_interval=0.3)
    await eventually(lambda: device_online(hub, identity.device_id), timeout=30, what="online")
    assert paths.socket.exists()

    second = _command("edge.cli", "run", "--data", str(paths.root))

    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"outpost-agent: error: another outpost-agent (pid {first.process.pid}) is running "
        f"on {paths.root}"
    )
    assert "Traceback" not in second.stderr
    assert first.process.poll() is None
    assert paths.socket.exists()  # the first agent's local API was left alone
    # Once the first is gone (even by kill -9), the folder is free again.
    first.stop()
    third = agents(paths, heartbeat_interval=0.3)
    await eventually(
        lambda: _logged(third, "starting (profile"), timeout=30, what="the next agent to start"
    )
    assert third.process.poll() is None


async def _logged(agent: AgentProcess, text: str) -> bool:
    return text in agent.output()
