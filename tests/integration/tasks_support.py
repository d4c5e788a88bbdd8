"""What the end-to-end task tests share (test_task_allocation.py, test_task_faults.py,
test_task_submission.py; the connectivity and courier checkers too): the model and input
they submit, the hub settings they run with, agents started as fleet members with the
shipped models, and reads of the hub's tasks and of an agent's store."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from hub.store import Task
from outpost.modelbundle import read_bundle
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_store_forward import write_agent_settings
from tests.support import SHIPPED_MODELS, AgentProcess, eventually

VIB = "vibration-anomaly"
SAMPLE = read_bundle(SHIPPED_MODELS[0]).sample
assert SAMPLE is not None
INPUT = SAMPLE.input  # int8, bearing_fault

# The tests poll the API; short accept timeouts keep lapses quick.
TASK_HUB_SETTINGS = "api_rate_per_s = 1e6\napi_rate_burst = 100000\ntask_accept_timeout_s = 10\n"


@dataclass
class Member:
    paths: DevicePaths
    device_id: str
    agent: AgentProcess


Starter = Callable[..., Any]


def member_starter(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> Starter:
    """What a module's `start_member` fixture gives its tests: start an agent as a
    fleet member (enrolled with `labels`, the shipped models installed unless `models`
    is false) and return it once the hub sees it ready for tasks."""

    async def _start(
        profile: str = "generic",
        labels: dict[str, str] | None = None,
        *,
        models: bool = True,
        settings: str = "",
        heartbeat: float = 0.5,
    ) -> Member:
        paths, identity = await enroll_device(profile, labels or {"fleet": "t"})
        if models:
            directory = ModelDirectory(paths.models)
            for folder in SHIPPED_MODELS:
                directory.install(folder)
        write_agent_settings(paths, settings)
        agent = agents(paths, heartbeat_interval=heartbeat)
        member = Member(paths, identity.device_id, agent)
        await wait_ready(hub, member, models=models)
        return member

    return _start


async def wait_ready(hub: Hub, member: Member, *, models: bool = True) -> None:
    async def ready() -> bool:
        assert member.agent.process.poll() is None, member.agent.output()
        device = await hub.parts.store.device(member.device_id)
        return bool(
            device
            and device.online
            and device.task_slots > 0
            and (not models or len(device.models) == 2)
        )

    await eventually(ready, timeout=15, what=f"{member.device_id} ready for tasks")


async def submit(api: ApiClient, token: str, tasks: list[dict[str, Any]]) -> list[str]:
    reply = await api.call("POST", "/api/v1/tasks", token=token, body={"tasks": tasks})
    assert reply.status == 202, reply.body
    ids: list[str] = reply.body["ids"]
    assert len(ids) == len(tasks)
    return ids


async def tasks_of(hub: Hub, ids: list[str]) -> dict[str, Task]:
    found = {}
    for task_id in ids:
        task = await hub.parts.store.task(task_id)
        assert task is not None
        found[task_id] = task
    return found


async def all_ended(hub: Hub, ids: list[str], timeout: float = 60) -> dict[str, Task]:
    ended = ("succeeded", "failed", "expired", "cancelled")

    async def done() -> dict[str, Task]:
        found = await tasks_of(hub, ids)
        return found if all(t.state in ended for t in found.values()) else {}

    result: dict[str, Task] = await eventually(
        done, timeout=timeout, every=0.2, what=f"{len(ids)} tasks ended"
    )
    return result


def ended_once(task: Task) -> bool:
    terminal = [
        e for e in task.events if e.state in ("succeeded", "failed", "expired", "cancelled")
    ]
    return len(terminal) == 1


def vib(priority: int = 5, **extra: Any) -> dict[str, Any]:
    return {"model": VIB, "input": INPUT, "dtype": "int8", "priority": priority, **extra}


def hub_has_caught_up(hub: Hub, member: Member) -> bool:
    """The agent's store has nothing unacknowledged in its results stream."""
    with contextlib.closing(sqlite3.connect(f"file:{member.paths.store}?mode=ro", uri=True)) as db:
        (records,) = db.execute("SELECT records FROM streams WHERE stream = 'results'").fetchone()
    return bool(records == 0)
