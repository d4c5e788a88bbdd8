"""Which version of each installed model serves: loaded at start, swapped for a new
version while the old one serves, rolled back when the new one fails in use.

A new version is `activate`d beside the serving one: it is loaded and self-tested, then
swapped in. One that then fails request after request is rolled back to the version it
replaced (the decision is `faults.FaultWatch`'s). numpy and the runtime are imported only
when there is a model to load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.inference.directory import Entry, ModelDirectory
from edge.inference.runtime import RuntimeChoice, RuntimeMissing
from edge.rollup import Tally
from outpost.modelbundle import Bundle, BundleError

if TYPE_CHECKING:
    from edge.inference.faults import WatchedRunner

logger = logging.getLogger(__name__)

# Consecutive faults in use after which an activated version is rolled back. The same
# value as `faults.FAULT_LIMIT`, repeated: importing `faults` imports numpy.
FAULT_LIMIT = 5

# Told after a roll-back: model name, the version given up, the one serving again, why.
RolledBack = Callable[[str, str, str, str], Awaitable[None]]


@dataclass
class Slot:
    """One installed model: the version that serves, or why none does."""

    entry: Entry  # the serving version (or the one that failed to load)
    versions: list[str]  # every installed version, read at start and at each swap
    runner: WatchedRunner | None = None  # None: the version failed to load
    error: str = ""
    refused: int = 0  # requests refused because its queue was full


@dataclass(frozen=True)
class Loading:
    """How each model is loaded: threads, interpreters, queue and fault limit."""

    num_threads: int = 1
    interpreters: int = 1
    queue_limit: int = 16
    fault_limit: int = FAULT_LIMIT


class ModelSlots:
    """The slot of each installed model, and the swaps of their versions."""

    def __init__(
        self, directory: ModelDirectory, runtime: RuntimeChoice, loading: Loading, tally: Tally
    ) -> None:
        self._directory = directory
        self._runtime = runtime
        self._loading = loading
        self._tally = tally  # each runner counts its answers and errors here
        self._slots: dict[str, Slot] = {}
        self._swapping = asyncio.Lock()  # one activation or roll-back at a time
        self._rollbacks: set[asyncio.Task[None]] = set()
        # None while nobody listens (the deployer sets it while it runs): a roll-back
        # still happens, only unreported.
        self.on_rollback: RolledBack | None = None

    async def load_installed(self) -> None:
        """Load every installed model; a model that fails is reported, the rest serve."""

        def scan() -> dict[str, Slot]:
            # What killed installs left goes at each start, not only at the next install
            # of the same model, which may never come.
            self._directory.sweep()
            return {
                e.name: Slot(e, self._directory.versions(e.name), error=e.error)
                for e in self._directory.entries()
            }

        self._slots = await asyncio.to_thread(scan)
        if not self._slots:
            return
        from edge.inference.runner import ModelFault

        try:
            runtime = await self._runtime.get()
        except RuntimeMissing as exc:
            logger.error("%s", exc)
            for slot in self._slots.values():
                slot.error = slot.error or str(exc)
            return
        for slot in self._slots.values():
            if slot.entry.bundle is None:
                logger.error("model %s not loaded: %s", slot.entry.name, slot.error)
                continue
            try:
                slot.runner = await self._load(slot.entry.bundle)
            except ModelFault as exc:
                slot.error = str(exc)
                logger.error("model %s not loaded: %s", slot.entry.name, exc)
                continue
            logger.info(
                "model %s %s ready (%s)", slot.entry.name, slot.entry.version, runtime.label
            )

    async def close(self) -> None:
        """Stop the roll-backs under way, then close every runner."""
        for task in list(self._rollbacks):
            task.cancel()
        await asyncio.gather(*self._rollbacks, return_exceptions=True)
        for slot in self._slots.values():
            if slot.runner is not None:
                await asyncio.to_thread(slot.runner.close)

    def get(self, name: str) -> Slot | None:
        """Return the slot of `name` (None: not installed)."""
        return self._slots.get(name)

    def items(self) -> list[tuple[str, Slot]]:
        """Return every slot with its model's name, by name."""
        return sorted(self._slots.items())

    def serving(self, name: str) -> str | None:
        """Return the version of `name` that serves now (None: not installed or not loaded)."""
        slot = self._slots.get(name)
        return slot.entry.version if slot is not None and slot.runner is not None else None

    async def activate(self, name: str, version: str) -> str | None:
        """Load and self-test an installed version while the current one serves, then
        make it the serving and the `active` version; return the version it replaced
        (None if none served).

        Raises `BundleError` (not installed, unreadable) or `ModelFault` (does not load,
        fails its self-test): the version that served before still does, and the
        `active` file is unchanged. A new model name becomes a new slot.
        """
        from edge.inference.runner import ModelFault

        async with self._swapping:
            entry = await asyncio.to_thread(self._directory.entry, name, version)
            if entry.bundle is None:
                raise BundleError(entry.error)
            slot = self._slots.get(name)
            if (
                slot is not None
                and slot.runner is not None
                and slot.entry.version == version
                and slot.runner.manifest.sha256 == entry.bundle.manifest.sha256
            ):
                return None  # already serving: a repeated activation changes nothing
            runner = await self._load(entry.bundle)
            try:
                await asyncio.to_thread(self._directory.set_active, name, version)
            except (OSError, BundleError) as exc:
                await asyncio.to_thread(runner.close)
                raise ModelFault(f"{name} {version}: cannot record it as active: {exc}") from exc
            # Only a version that served can be returned to.
            previous = self.serving(name)
            if previous != version:
                runner.watch.fallback = previous
            await self._swap(name, entry, runner)
        logger.info("model %s %s active (was %s)", name, version, previous or "not serving before")
        return previous

    def arm_rollback(self, name: str, version: str, fallback: str) -> None:
        """Let `version`, when it serves, fall back to `fallback` on repeated faults (after
        a restart: the deployer remembers what an activation replaced)."""
        slot = self._slots.get(name)
        if (
            slot is not None
            and slot.runner is not None
            and slot.entry.version == version
            and fallback != version
            and fallback in slot.versions
        ):
            slot.runner.watch.fallback = fallback

    async def _load(self, bundle: Bundle) -> WatchedRunner:
        """Return a loaded, self-tested runner; raise `ModelFault` naming why not."""
        from edge.inference.faults import FaultWatch, WatchedRunner
        from edge.inference.runner import ModelFault

        try:
            runtime = await self._runtime.get()
        except RuntimeMissing as exc:
            raise ModelFault(str(exc)) from exc
        loading = self._loading
        runner = WatchedRunner(
            bundle,
            runtime,
            num_threads=loading.num_threads,
            interpreters=loading.interpreters,
            queue_limit=loading.queue_limit,
            watch=FaultWatch(loading.fault_limit),
            tripped=self._tripped,
            tally=self._tally,
        )
        try:
            await asyncio.to_thread(runner.load)
        except ModelFault:
            await asyncio.to_thread(runner.close)
            raise
        except Exception as exc:  # whatever a runtime raises, one model must not stop the rest
            logger.exception(
                "model %s %s not loaded", bundle.manifest.name, bundle.manifest.version
            )
            await asyncio.to_thread(runner.close)
            raise ModelFault(f"{type(exc).__name__}: {exc}") from exc
        return runner

    async def _swap(self, name: str, entry: Entry, runner: WatchedRunner) -> None:
        """Serve `runner` from now on; the old one finishes what it holds, then closes."""
        versions = await asyncio.to_thread(self._directory.versions, name)
        slot = self._slots.get(name)
        if slot is None:
            self._slots[name] = Slot(entry, versions, runner)
            return
        old = slot.runner
        slot.entry, slot.versions, slot.runner, slot.error = entry, versions, runner, ""
        if old is not None:
            await asyncio.to_thread(old.close)

    def _tripped(self, runner: WatchedRunner, fallback: str, reason: str) -> None:
        task = asyncio.create_task(
            self._roll_back(runner, fallback, reason),
            name=f"inference.rollback-{runner.manifest.name}",
        )
        self._rollbacks.add(task)
        task.add_done_callback(self._rollbacks.discard)

    async def _roll_back(self, runner: WatchedRunner, fallback: str, reason: str) -> None:
        """Serve `fallback` again in place of `runner`'s version, and say so."""
        from edge.inference.runner import ModelFault

        name, bad = runner.manifest.name, runner.manifest.version
        async with self._swapping:
            slot = self._slots.get(name)
            if slot is None or slot.runner is not runner:
                return  # replaced meanwhile: nothing to roll back
            logger.warning("model %s %s: %s; rolling back to %s", name, bad, reason, fallback)
            try:
                entry = await asyncio.to_thread(self._directory.entry, name, fallback)
                if entry.bundle is None:
                    raise BundleError(entry.error)
                restored = await self._load(entry.bundle)
            except (ModelFault, BundleError) as exc:
                logger.error("model %s: cannot roll back to %s: %s", name, fallback, exc)
                return
            try:
                # Marked as a roll-back on disk: its report may be lost (a kill next).
                await asyncio.to_thread(self._directory.roll_back, name, bad, fallback)
            except (OSError, BundleError) as exc:
                # Serving it regardless beats serving a failing model; after a restart
                # the `active` file's version (the failing one) would load again.
                logger.error("model %s: cannot record %s as active: %s", name, fallback, exc)
            await self._swap(name, entry, restored)
        if self.on_rollback is not None:
            try:
                await self.on_rollback(name, bad, fallback, reason)
            except Exception:  # the listener's failure must not undo the roll-back
                logger.exception("roll-back of %s %s: listener failed", name, bad)
