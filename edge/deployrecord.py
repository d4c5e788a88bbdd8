"""Keep what became of each model release on disk, then report it: the deployer's
book-keeping.

Apart from deploy.py, which decides and acts, because this is the one writer of the
state file (its rules are in deploystate.py) and the one sender of model states,
whichever step of the deployer (or the inference service's roll-back) has news.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge import deploystate
from edge.deploystate import DeployStates, Record
from outpost import wire

logger = logging.getLogger(__name__)

Report = Callable[[wire.ModelState], Awaitable[None]]


class Recorder:
    """The deploy states, read once from their file and written before each report."""

    def __init__(self, path: Path, report: Report) -> None:
        self._path = path
        self._report = report
        self._states: DeployStates | None = None
        self._loading = asyncio.Lock()
        self._saving = asyncio.Lock()  # one writer of the state file at a time

    @property
    def states(self) -> DeployStates | None:
        """The states if read already (None: not yet)."""
        return self._states

    async def loaded(self) -> DeployStates:
        async with self._loading:
            if self._states is None:
                self._states = await asyncio.to_thread(DeployStates.load, self._path)
            return self._states

    async def set(self, record: Record) -> None:
        """Keep a release's new state on disk, then report it."""
        states = await self.loaded()
        states.put(record)
        await self.save()
        await self.send(record)

    async def save(self) -> None:
        data = (await self.loaded()).dump()
        async with self._saving:
            try:
                await asyncio.to_thread(deploystate.write, self._path, data)
            except OSError as exc:  # a full disk must not stop the roll-out; reported anyway
                logger.error("deploy states not saved: %s", exc)

    async def send(self, record: Record) -> None:
        try:
            await self._report(record.message())
        except Exception:  # reporting is best effort: states are sent again after hello
            logger.exception("model state of %s %s not reported", record.name, record.version)

    async def refuse_unverified(self, document: bytes, detail: str, *, final: bool = True) -> None:
        name, version = deploystate.claimed(document)
        logger.warning("model release %s %s refused: %s", name or "?", version or "?", detail)
        # Reported, not kept: an unverified document must not become the model's current
        # record (it could name any version). The retained list comes again on every
        # connect, and is refused again.
        await self.send(Record(name, version, "", "failed", detail, final))

    async def rolled_back(self, name: str, bad: str, restored: str, reason: str) -> None:
        """The inference service gave up `bad` for `restored`: say so, and remember."""
        found = (await self.loaded()).find_version(name, bad)
        record = Record(
            name=name,
            version=bad,
            sha256=found.sha256 if found else "",
            state="rolled_back",
            detail=f"{reason}; {restored} serves again",
        )
        await self.set(record)
