"""The agent's inference service: every installed model loaded once, run on demand, and
the results the reporting rules ask for written to the results stream.

Local programs reach it through the local API; tasks from the hub (later) through the
same `infer`. numpy and the runtime are imported only when there is a model to load:
an agent without models does not pay their memory.

A new version is `activate`d while the old one serves: it is loaded and self-tested
beside it, then swapped in. One that then fails in use, request after request, is
rolled back to the version it replaced (see `faults.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edge.inference.directory import Entry, ModelDirectory
from edge.inference.runtime import Preference
from edge.rollup import Tally
from outpost import wire
from outpost.modelbundle import Bundle, BundleError

if TYPE_CHECKING:
    from edge.inference.faults import WatchedRunner
    from edge.inference.runner import Inference, ModelRunner
    from edge.inference.runtime import Runtime
    from edge.store import AgentStore

logger = logging.getLogger(__name__)

ReportMode = Literal["all", "flagged", "none"]

# Consecutive faults in use after which an activated version is rolled back.
FAULT_LIMIT = 5

# Told after a roll-back: model name, the version given up, the one serving again, why.
RolledBack = Callable[[str, str, str, str], Awaitable[None]]


class UnknownModel(LookupError):
    pass


class NotAllowed(PermissionError):
    """The policy does not allow this model."""


class ModelUnavailable(RuntimeError):
    """The model is installed but could not be loaded; the message says why."""


@dataclass(frozen=True)
class Reporting:
    """Which local inferences become results (sent to the hub through the store).

    `flagged`: those whose label is not the model's normal label, or whose confidence is
    below `confidence_below`. Set from the agent's settings now, from policy later.
    """

    mode: ReportMode = "flagged"
    confidence_below: float = 0.6

    def reason(self, normal_label: str, inference: Inference) -> str | None:
        """Why this inference is recorded, or None when it is not."""
        if self.mode == "none":
            return None
        if normal_label and inference.label != normal_label:
            flag = "label"
        elif inference.confidence < self.confidence_below:
            flag = "low_confidence"
        else:
            flag = None
        if self.mode == "all":
            return flag or "all"
        return flag


@dataclass(frozen=True)
class Outcome:
    """An inference and what became of its record."""

    inference: Inference
    version: str
    recorded_seq: int | None
    record_error: str | None
    labels: list[str]  # of the version that answered (another may serve by now)


@dataclass
class _Slot:
    entry: Entry  # the serving version (or the one that failed to load)
    versions: list[str]  # every installed version, read at start and at each swap
    runner: WatchedRunner | None = None
    error: str = ""
    refused: int = 0


class InferenceService:
    def __init__(
        self,
        directory: ModelDirectory,
        store: AgentStore,
        *,
        runtime: Preference = "auto",
        num_threads: int = 1,
        interpreters: int = 1,
        queue_limit: int = 16,
        reporting: Reporting | None = None,
        fault_limit: int = FAULT_LIMIT,
    ) -> None:
        self.directory = directory
        self.reporting = reporting or Reporting()
        self.allowed_models: frozenset[str] = frozenset()  # empty: any (set by policy)
        self.runtime_label = "none"
        self._store = store
        self._preference = runtime
        self._num_threads = num_threads
        self._interpreters = interpreters
        self._queue_limit = queue_limit
        self._fault_limit = fault_limit
        self._slots: dict[str, _Slot] = {}
        self._runtime: Runtime | None = None
        self._swapping = asyncio.Lock()  # one activation or roll-back at a time
        self._rollbacks: set[asyncio.Task[None]] = set()
        self.on_rollback: RolledBack | None = None
        # Answers and errors since the last metrics roll-up (local API and tasks alike).
        self.tally = Tally()

    async def start(self) -> None:
        """Load every installed model; a model that fails is reported, the rest serve."""

        def scan() -> dict[str, _Slot]:
            return {
                e.name: _Slot(e, self.directory.versions(e.name), error=e.error)
                for e in self.directory.entries()
            }

        self._slots = await asyncio.to_thread(scan)
        if not self._slots:
            return
        from edge.inference.runner import ModelFault
        from edge.inference.runtime import RuntimeMissing, choose_runtime

        try:
            self._runtime = await asyncio.to_thread(choose_runtime, self._preference)
        except RuntimeMissing as exc:
            logger.error("%s", exc)
            for slot in self._slots.values():
                slot.error = slot.error or str(exc)
            return
        self.runtime_label = self._runtime.label
        for slot in self._slots.values():
            if slot.entry.bundle is None:
                logger.error("model %s not loaded: %s", slot.entry.name, slot.error)
                continue
            try:
                slot.runner = await self._load(slot.entry.bundle, self._runtime)
            except ModelFault as exc:
                slot.error = str(exc)
                logger.error("model %s not loaded: %s", slot.entry.name, exc)
                continue
            logger.info(
                "model %s %s ready (%s)", slot.entry.name, slot.entry.version, self.runtime_label
            )

    async def close(self) -> None:
        for task in list(self._rollbacks):
            task.cancel()
        await asyncio.gather(*self._rollbacks, return_exceptions=True)
        for slot in self._slots.values():
            if slot.runner is not None:
                await asyncio.to_thread(slot.runner.close)

    def serving(self, name: str) -> str | None:
        """The version of `name` that serves now (None: not installed or not loaded)."""
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
            entry = await asyncio.to_thread(self.directory.entry, name, version)
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
            runner = await self._load(entry.bundle, await self._ensure_runtime())
            try:
                await asyncio.to_thread(self.directory.set_active, name, version)
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

    async def _ensure_runtime(self) -> Runtime:
        """The runtime chosen at start, or (no model then) chosen now."""
        from edge.inference.runner import ModelFault
        from edge.inference.runtime import RuntimeMissing, choose_runtime

        if self._runtime is None:
            try:
                self._runtime = await asyncio.to_thread(choose_runtime, self._preference)
            except RuntimeMissing as exc:
                raise ModelFault(str(exc)) from exc
            self.runtime_label = self._runtime.label
        return self._runtime

    async def _load(self, bundle: Bundle, runtime: Runtime) -> WatchedRunner:
        """A loaded, self-tested runner; `ModelFault` naming why not."""
        from edge.inference.faults import FaultWatch, WatchedRunner
        from edge.inference.runner import ModelFault

        runner = WatchedRunner(
            bundle,
            runtime,
            num_threads=self._num_threads,
            interpreters=self._interpreters,
            queue_limit=self._queue_limit,
            watch=FaultWatch(self._fault_limit),
            tripped=self._tripped,
            tally=self.tally,
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
        versions = await asyncio.to_thread(self.directory.versions, name)
        slot = self._slots.get(name)
        if slot is None:
            self._slots[name] = _Slot(entry, versions, runner)
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
                entry = await asyncio.to_thread(self.directory.entry, name, fallback)
                if entry.bundle is None:
                    raise BundleError(entry.error)
                restored = await self._load(entry.bundle, await self._ensure_runtime())
            except (ModelFault, BundleError) as exc:
                logger.error("model %s: cannot roll back to %s: %s", name, fallback, exc)
                return
            try:
                await asyncio.to_thread(self.directory.set_active, name, fallback)
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

    def runner(self, name: str) -> ModelRunner:
        slot = self._slots.get(name)
        if self.allowed_models and name not in self.allowed_models:
            raise NotAllowed(f"policy does not allow model {name!r}")
        if slot is None:
            known = ", ".join(sorted(self._slots)) or "none"
            raise UnknownModel(f"no model {name!r} is installed (installed: {known})")
        if slot.runner is None:
            raise ModelUnavailable(f"model {name!r} is installed but not usable: {slot.error}")
        return slot.runner

    async def infer(
        self, name: str, value: Any, dtype: str = "float32", context: dict[str, Any] | None = None
    ) -> Outcome:
        """Run one inference and record it if the reporting rules say so.

        Raises `UnknownModel`, `ModelUnavailable`, `InputError`, `ModelBusy`, `ModelFault`.
        """
        from edge.inference.runner import ModelBusy

        runner = self.runner(name)
        try:
            inference = await runner.infer(value, dtype)
        except ModelBusy:
            self._slots[name].refused += 1
            raise
        manifest = runner.manifest
        reason = self.reporting.reason(manifest.normal_label, inference)
        seq, error = None, None
        if reason is not None:
            from edge.store import StoreWriteError, StreamFullError

            record = result_record(manifest.name, manifest.version, manifest.labels, inference)
            record.update(flag=reason, context=context or {})
            try:
                appended = await self._store.append("results", [record])
                seq = appended.first_seq
            except StreamFullError as exc:
                self.tally.error("stream_full")
                error = f"stream_full: {exc.reason}"
            except StoreWriteError as exc:  # a full or failing disk: answered, not recorded
                self.tally.error("stream_full")
                error = f"not_recorded: {exc.reason}"
        return Outcome(inference, manifest.version, seq, error, manifest.labels)

    def models(self) -> list[dict[str, Any]]:
        """What `GET /v1/models` shows: every installed model and its state."""
        out = []
        for name, slot in sorted(self._slots.items()):
            bundle = slot.entry.bundle
            item: dict[str, Any] = {
                "name": name,
                "version": slot.entry.version,
                "state": "ready" if slot.runner else "failed",
                "error": slot.error or None,
                "versions": slot.versions,
            }
            if bundle is not None:
                m = bundle.manifest
                item.update(
                    sha256=m.sha256,
                    size=m.size,
                    description=m.description,
                    labels=m.labels,
                    normal_label=m.normal_label,
                    input={"shape": m.input.shape, "description": m.input.description},
                )
            if slot.runner is not None:
                item.update(
                    served=slot.runner.served,
                    failed=slot.runner.failed,
                    faults_in_a_row=slot.runner.watch.streak,
                    refused_busy=slot.refused,
                    outstanding=slot.runner.outstanding,
                )
            out.append(item)
        return out

    def inventory(self) -> list[wire.ModelInfo]:
        """What `hello` and heartbeats say the device has."""
        return [
            wire.ModelInfo(
                name=name,
                version=slot.entry.version,
                sha256=slot.entry.bundle.manifest.sha256 if slot.entry.bundle else "",
                state="ready" if slot.runner else "failed",
                error=slot.error[:256],
            )
            for name, slot in sorted(self._slots.items())
        ]


def result_record(
    name: str, version: str, labels: list[str], inference: Inference
) -> dict[str, Any]:
    """An inference as a record of the results stream."""
    return {
        "kind": "inference",
        "model": name,
        "version": version,
        "label": inference.label,
        "confidence": round(inference.confidence, 6),
        "scores": {label: round(s, 6) for label, s in zip(labels, inference.scores, strict=True)},
        "latency_ms": round(inference.latency_ms, 3),
        "ts": time.time(),
    }
