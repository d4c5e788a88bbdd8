"""The shell examples of the README's tour and of docs/api.md run as written against a
running hub with a device that has the model they name, and the tasks they submit
succeed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from asyncio.subprocess import PIPE
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.inference.directory import ModelDirectory
from hub.app import Hub
from hub.store import Task
from tests.conftest import Enroller
from tests.support import REPO, SHIPPED_MODELS, AgentProcess, eventually

MARKER = "<!-- the block below is run by tests/integration/test_readme.py -->"
ENDED = ("succeeded", "failed", "expired", "cancelled")


def _example(document: Path) -> str:
    """The shell block that follows the marker in `document`."""
    after = document.read_text().split(MARKER, 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "curl" in block
    return block


def _answers_json(block: str) -> int:
    """How many of the block's curl calls answer JSON: all but /metrics."""
    calls = [line for line in block.splitlines() if line.startswith("curl ")]
    return sum("/metrics" not in line for line in calls)


@pytest.fixture
async def pump_station(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> str:
    """A running agent at site north with the shipped models, ready for tasks: the hub
    refuses a task for a model no enrolled device has, so the examples need it."""
    paths, identity = await enroll_device("raspberry-pi-4", labels={"site": "north"})
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    agent = agents(paths)

    async def ready() -> bool:
        assert agent.process.poll() is None, agent.output()
        device = await hub.parts.store.device(identity.device_id)
        ready_models = (
            {m["name"] for m in device.models if m["state"] == "ready"} if device else set()
        )
        return bool(device and device.online and device.task_slots and ready_models)

    await eventually(ready, timeout=20, what="the agent online with its models")
    return identity.device_id


async def _run(block: str, hub: Hub) -> str:
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "DATA": str(hub.paths.root),
        "HUB": hub.config.hub_url,
        "CA": str(hub.paths.ca_cert),
    }
    # Each curl's answer on a line of its own (curl ends none with a newline).
    script = "set -euo pipefail\n" + block.replace("\ncurl ", "\necho; curl ")
    # The hub runs in this event loop: the script must not block it.
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, env=env, cwd=REPO, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode() + err.decode()
    return out.decode()


async def _ended(hub: Hub, task_ids: list[str]) -> dict[str, Task]:
    async def probe() -> dict[str, Task]:
        tasks = [await hub.parts.store.task(task_id) for task_id in task_ids]
        if all(t is not None and t.state in ENDED for t in tasks):
            return {t.task_id: t for t in tasks if t is not None}
        return {}

    found: dict[str, Task] = await eventually(
        probe, timeout=30, every=0.1, what=f"tasks {task_ids} ended"
    )
    return found


@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
async def test_the_example_runs_as_shown_and_its_task_succeeds(
    hub: Hub, pump_station: str, document: str
) -> None:
    block = _example(REPO / document)
    stdout = await _run(block, hub)

    replies: list[Any] = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(replies) == _answers_json(block), stdout
    if "/metrics" in block:
        assert "# TYPE outpost_hub_devices gauge" in stdout
    submitted = [task_id for reply in replies for task_id in reply.get("ids", [])]
    assert submitted, f"{document}'s example submits no task through the API"

    ended = await _ended(hub, submitted)
    for task in ended.values():
        assert task.state == "succeeded", (task.state, task.error)
        assert task.device_id == pump_station
        assert task.result is not None
        assert task.result["label"] == "normal", task.result  # a pump running smoothly
    # The README's CLI line waited for its own task: it printed it ended, and succeeded.
    if "tasks submit" in block:
        assert re.search(r"^tsk-\S+\s+succeeded\s+vibration-anomaly", stdout, re.MULTILINE), stdout
