"""Doubles and helpers for the task runner's tests (test_task_runner*.py): a model whose
answers wait for the test, assignments, and polls with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.store import AgentStore, Bounds
from edge.tasks import TaskRunner
from outpost import wire
from outpost.aio import cancel_until_done

DEADLINE_S = 30.0
UNBOUNDED = Bounds(0, 0, 0)


@dataclass
class Answer:
    label: str = "normal"
    confidence: float = 1.0
    scores: tuple[float, ...] = (1.0,)
    latency_ms: float = 0.1


@dataclass
class Manifest:
    version: str = "1.0.0"
    labels: tuple[str, ...] = ("normal",)
    input: Any = None


class Tally:
    def error(self, reason: str) -> None:
        pass


class Shadows:
    def after(self, *args: Any) -> None:
        pass


@dataclass
class GatedModel:
    """Answers only when the test opens the gate; counts how many wait at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    most: int = 0
    manifest: Manifest = field(default_factory=Manifest)
    tally: Tally = field(default_factory=Tally)
    shadows: Shadows = field(default_factory=Shadows)

    def runner(self, name: str) -> GatedModel:
        return self

    async def infer(self, data: Any, dtype: str) -> Answer:
        self.running += 1
        self.most = max(self.most, self.running)
        self.started.set()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return Answer()


def assignment(task_id: str, attempt: int = 1) -> wire.Assignment:
    return wire.Assignment(
        task_id=task_id,
        attempt=attempt,
        model="gated",
        version="",
        input=[1, 2, 3],
        dtype="int8",
        priority=0,
        deadline_in_s=600,
        lease_s=600,
    )


def ready_to_start(runner: TaskRunner) -> Callable[[], bool]:
    """Whether an assignment that finds a free slot would start at once."""
    return lambda: runner._serving and not runner._maybe_pending


@contextlib.asynccontextmanager
async def running(runner: TaskRunner) -> AsyncIterator[None]:
    task = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        await cancel_until_done(task)


async def until(check: Any, what: str) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not check():
            await asyncio.sleep(0.01)  # a poll with a deadline
    assert check(), what


async def stored_results(store: AgentStore) -> list[dict[str, Any]]:
    rows = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
    return [body for _, _, body in rows]


@contextlib.asynccontextmanager
async def agent_store(path: Path, bounds: Bounds = UNBOUNDED) -> AsyncIterator[AgentStore]:
    """A started agent store at `path`, every stream within `bounds`; closed after."""
    opened = AgentStore(path, {"results": bounds, "events": bounds, "metrics": bounds})
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()
