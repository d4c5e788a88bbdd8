"""Why a queued task waits, in words an operator can act on ("no online device has the
model vibration-anomaly", "all eligible devices are full"), worked out when the task is
read from the same view of the fleet the planner uses (allocation.py)."""

from __future__ import annotations

import json
import time
from typing import Final

from hub.store import HubStore, Task, TaskSettings
from hub.store.candidates import Candidate
from hub.store.leases import Known, Queued
from hub.tasks.allocation import matches

FLEET_FRESH_S: Final = 1.0  # a reason may be this old: it is advice, not a decision

ALLOCATION_DUE = "waiting for the next allocation pass"
MAX_NAMED = 5  # devices named in a reason; more are counted


class Explainer:
    """Explains pages of tasks from a view of the fleet read at most once a
    `FLEET_FRESH_S` (1,000 devices take milliseconds to read and parse), each kind of task
    (target, model, version, exclusions) once for that view."""

    def __init__(self, store: HubStore, settings: TaskSettings) -> None:
        self._store = store
        self._settings = settings
        self._fleet: tuple[list[Candidate], dict[str, Known]] = ([], {})
        self._read_at = float("-inf")
        # Reasons by kind of task, for the fleet view they were worked out from: matching
        # a kind against 1,000 devices takes milliseconds, and pages repeat kinds.
        self._said: dict[tuple[str, ...], str] = {}

    async def explain(self, tasks: list[Task]) -> list[str]:
        """Why each task waits ("" for those not queued)."""
        if not any(t.state == "queued" for t in tasks):
            return [""] * len(tasks)
        if time.monotonic() - self._read_at > FLEET_FRESH_S:
            self._fleet = await self._store.task_fleet(now=time.time(), settings=self._settings)
            self._read_at = time.monotonic()
            self._said = {}
        candidates, known = self._fleet
        said = self._said
        out = []
        for task in tasks:
            kind = (
                task.state,
                json.dumps(task.target, sort_keys=True),
                task.model,
                task.version,
                *sorted(task.excluded),
            )
            if kind not in said:
                said[kind] = explain(task, candidates, known)
            out.append(said[kind])
        return out


def explain(task: Task, candidates: list[Candidate], known: dict[str, Known]) -> str:
    """Why `task` is still queued; "" when it is not queued."""
    if task.state != "queued":
        return ""
    queued = Queued(
        task.task_id,
        task.model,
        task.version,
        task.priority,
        task.deadline,
        task.target,
        frozenset(task.excluded),
    )
    named = task.target.get("device")
    if named:
        return _for_named(named, queued, candidates, known)
    wanted = f"{task.model} {task.version}" if task.version else task.model
    matching = [c for c in candidates if matches(queued, c)]
    if not matching:
        return _no_match(queued, wanted, candidates, known)
    open_ = [c for c in matching if c.device_id not in queued.excluded]
    if not open_:
        refused = sorted(c.device_id for c in matching)
        return f"excluded after rejection by {_some(refused)}"
    if all(c.held >= c.slots for c in open_):
        slots = sum(c.slots for c in open_)
        return f"all eligible devices are full ({len(open_)} devices, {slots} slots taken)"
    return ALLOCATION_DUE


def _for_named(
    named: str, queued: Queued, candidates: list[Candidate], known: dict[str, Known]
) -> str:
    device = known.get(named)
    if device is None:
        return f"device {named} is no longer in the registry"
    if device.revoked:
        return f"device {named} is revoked"
    if named in queued.excluded:
        return f"excluded after rejection by {named}, the only device it may run on"
    candidate = next((c for c in candidates if c.device_id == named), None)
    if candidate is None:
        return f"device {named} is offline" if not device.online else f"{named} takes no tasks"
    if candidate.held >= candidate.slots:
        return f"device {named} is full ({candidate.held} of {candidate.slots} slots taken)"
    return ALLOCATION_DUE


def _no_match(
    queued: Queued, wanted: str, candidates: list[Candidate], known: dict[str, Known]
) -> str:
    def has(models: frozenset[tuple[str, str]]) -> bool:
        if queued.version:
            return (queued.model, queued.version) in models
        return any(name == queued.model for name, _ in models)

    selector = queued.target.get("selector") or {}
    if selector and any(has(c.models) for c in candidates):
        shown = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return f"no online device matching {shown} has the model {wanted} ready"
    elsewhere = sorted(i for i, k in known.items() if not k.revoked and has(k.models))
    online = {c.device_id for c in candidates}
    if any(i in online for i in elsewhere):
        return f"no online device has the model {wanted} ready ({_some(elsewhere)} report it)"
    if elsewhere:
        return f"no online device has the model {wanted} (offline: {_some(elsewhere)})"
    return f"no device has the model {wanted}"


def _some(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMED])
    return shown if len(ids) <= MAX_NAMED else f"{shown} and {len(ids) - MAX_NAMED} more"
