"""The agent's inference service: every installed model loaded once, run on demand, and
the results the reporting rules ask for written to the results stream.

Local programs reach it through the local API; tasks from the hub (later) through the
same `infer`. numpy and the runtime are imported only when there is a model to load:
an agent without models does not pay their memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edge.inference.directory import Entry, ModelDirectory
from edge.inference.runtime import Preference
from outpost import wire

if TYPE_CHECKING:
    from edge.inference.runner import Inference, ModelRunner
    from edge.store import AgentStore

logger = logging.getLogger(__name__)

ReportMode = Literal["all", "flagged", "none"]


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


@dataclass
class _Slot:
    entry: Entry
    versions: list[str]  # every installed version, read at start like the rest
    runner: ModelRunner | None = None
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
        self._slots: dict[str, _Slot] = {}

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
        from edge.inference.runner import ModelFault, ModelRunner
        from edge.inference.runtime import RuntimeMissing, choose_runtime

        try:
            runtime = await asyncio.to_thread(choose_runtime, self._preference)
        except RuntimeMissing as exc:
            logger.error("%s", exc)
            for slot in self._slots.values():
                slot.error = slot.error or str(exc)
            return
        self.runtime_label = runtime.label
        for slot in self._slots.values():
            if slot.entry.bundle is None:
                logger.error("model %s not loaded: %s", slot.entry.name, slot.error)
                continue
            runner = ModelRunner(
                slot.entry.bundle,
                runtime,
                num_threads=self._num_threads,
                interpreters=self._interpreters,
                queue_limit=self._queue_limit,
            )
            try:
                await asyncio.to_thread(runner.load)
            except ModelFault as exc:
                slot.error = str(exc)
                logger.error("model %s not loaded: %s", slot.entry.name, exc)
                continue
            except Exception as exc:  # whatever a runtime raises, one model must not stop the rest
                slot.error = f"{type(exc).__name__}: {exc}"
                logger.exception("model %s not loaded", slot.entry.name)
                runner.close()
                continue
            slot.runner = runner
            logger.info(
                "model %s %s ready (%s)", slot.entry.name, slot.entry.version, runtime.label
            )

    async def close(self) -> None:
        for slot in self._slots.values():
            if slot.runner is not None:
                await asyncio.to_thread(slot.runner.close)

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
            from edge.store import StreamFullError

            record = result_record(manifest.name, manifest.version, manifest.labels, inference)
            record.update(flag=reason, context=context or {})
            try:
                appended = await self._store.append("results", [record])
                seq = appended.first_seq
            except StreamFullError as exc:
                error = f"stream_full: {exc.reason}"
        return Outcome(inference, manifest.version, seq, error)

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
