"""The agent's inference service: every installed model loaded once, run on demand, and
the results the reporting rules ask for written to the results stream.

Local programs reach it through the local API; tasks from the hub through the same
runners. numpy and the runtime are imported only when there is a model to load: an agent
without models does not pay their memory. Which version of each model serves, and its
swaps and roll-backs, are `swap.py`'s; which answers become records, `reporting.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edge.inference.directory import ModelDirectory
from edge.inference.explaining import ExplainBusy, Explanations
from edge.inference.reporting import Outcome, Reporter, Reporting
from edge.inference.runtime import Preference, RuntimeChoice
from edge.inference.shadow import Shadows
from edge.inference.swap import FAULT_LIMIT, Loading, ModelSlots, Slot
from edge.rollup import Tally
from edge.store import AgentStore
from outpost import wire

if TYPE_CHECKING:
    from edge.inference.runner import ModelRunner

logger = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No model of this name is installed."""


class NotAllowed(PermissionError):
    """The policy does not allow this model."""


class ModelUnavailable(RuntimeError):
    """The model is installed but could not be loaded; the message says why."""


class InferenceService:
    """The installed models, as local programs and tasks use them."""

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
        # Answers and errors since the last metrics roll-up (local API and tasks alike).
        self.tally = Tally()
        self._runtime = RuntimeChoice(runtime)
        self.slots = ModelSlots(
            directory,
            self._runtime,
            Loading(num_threads, interpreters, queue_limit, fault_limit),
            self.tally,
        )
        self._reporter = Reporter(store, self.tally)
        self._store = store
        self._rng = random.Random()  # noqa: S311  # sampling, not secrecy
        self._explaining: asyncio.Task[None] | None = None
        # Local API requests and flagged results alike: one at a time, on their own thread.
        self.explanations = Explanations()
        self._loading = Loading(num_threads, interpreters, queue_limit, fault_limit)
        self.shadows = Shadows(self.tally)  # shadow roll-outs' candidates

    @property
    def runtime_label(self) -> str:
        """Name the runtime models run on ("none" until one is chosen)."""
        return self._runtime.label

    async def start(self) -> None:
        """Load every installed model; a model that fails is reported, the rest serve."""
        await self.slots.load_installed()

    async def close(self) -> None:
        """Stop every model's runner."""
        await self.shadows.close()
        await self.slots.close()
        self.explanations.close()

    async def shadow(self, name: str, version: str) -> None:
        """Load the installed `version` of `name` as its shadow candidate (it never
        serves); `ModelFault` (or an OSError, a BundleError) if it cannot be loaded."""
        from edge.inference.runner import ModelFault, ModelRunner

        if self.shadows.candidate(name) == version:
            return
        bundle = await asyncio.to_thread(lambda: self.directory.entry(name, version).bundle)
        if bundle is None:
            raise ModelFault(f"{name} {version} is not installed")
        runtime = await self._runtime.get()
        runner = ModelRunner(
            bundle,
            runtime,
            num_threads=1,  # its interpreter's threads are not niced: one, the worker
            interpreters=1,  # its own, beside the live version's
            queue_limit=self._loading.queue_limit,
            background=True,  # only CPU the live path leaves
        )
        try:
            await asyncio.to_thread(runner.load)
        except BaseException:
            await asyncio.to_thread(runner.close)
            raise
        await self.shadows.put(name, runner)
        logger.info("model %s %s runs in shadow", name, version)

    def runner(self, name: str) -> ModelRunner:
        """Return the runner of `name`, counting its answers' CPU time only while a
        candidate is in shadow for it; raise `NotAllowed`, `UnknownModel` or
        `ModelUnavailable`."""
        return self._usable(name)[1]

    def _usable(self, name: str) -> tuple[Slot, ModelRunner]:
        slot = self.slots.get(name)
        if self.allowed_models and name not in self.allowed_models:
            raise NotAllowed(f"policy does not allow model {name!r}")
        if slot is None:
            known = ", ".join(installed for installed, _ in self.slots.items()) or "none"
            raise UnknownModel(f"no model {name!r} is installed (installed: {known})")
        if slot.runner is None:
            raise ModelUnavailable(f"model {name!r} is installed but not usable: {slot.error}")
        # Its answers' CPU time is read only while a candidate is compared against them.
        slot.runner.count_cpu = self.shadows.candidate(name) is not None
        return slot, slot.runner

    @contextlib.contextmanager
    def decoding(self, name: str) -> Iterator[None]:
        """Hold a place in `name`'s queue while a request's body is decoded (a large one
        takes a worker thread): raise `ModelBusy` when the queue is full, as `infer` would,
        before the body becomes Python objects."""
        from edge.inference.runner import ModelBusy

        slot, runner = self._usable(name)
        try:
            runner.hold_place()
        except ModelBusy:
            slot.refused += 1
            self.tally.error("busy")  # as the runner counts a refusal of its own
            raise
        try:
            yield
        finally:
            runner.release_place()

    async def infer(
        self, name: str, value: Any, dtype: str = "float32", context: dict[str, Any] | None = None
    ) -> Outcome:
        """Run one inference and record it if the reporting rules say so.

        Raises `UnknownModel`, `ModelUnavailable`, `InputError`, `ModelBusy`, `ModelFault`.
        """
        from edge.inference.runner import ModelBusy

        slot, runner = self._usable(name)
        try:
            inference = await runner.infer(value, dtype)
        except ModelBusy:
            slot.refused += 1
            raise
        m = runner.manifest
        self.shadows.after(name, m.version, value, dtype, inference, m.input)
        outcome = await self._reporter.report(self.reporting, m, inference, context)
        share = self.reporting.explain_flagged
        if outcome.recorded_seq is not None and share and self._rng.random() < share:
            self._explain_later(runner, value, dtype, outcome.recorded_seq)
        return outcome

    def _explain_later(self, runner: ModelRunner, value: Any, dtype: str, seq: int) -> None:
        """Explain a recorded flagged result after its caller has the answer, on a worker
        thread, and send the explanation as an event naming the result (policy
        inference.explain_flagged); one at a time: a burst of flags sheds the rest."""
        if self._explaining is not None and not self._explaining.done():
            return
        self._explaining = asyncio.get_running_loop().create_task(
            self._explain(runner, value, dtype, seq), name="agent.explain-flagged"
        )

    async def _explain(self, runner: ModelRunner, value: Any, dtype: str, seq: int) -> None:
        try:
            async with self.explanations.turn():
                found = await self.explanations.run(runner, {"input": value, "dtype": dtype})
            await self._store.append(
                "events", [{"event": "explanation", "result_seq": seq, **found}]
            )
        except ExplainBusy:  # the local API's callers keep the explanations busy: shed it
            logger.info("flagged result %d not explained: explanations are busy", seq)
        except Exception as exc:  # an explanation is extra: its failure is only logged
            logger.warning("flagged result %d not explained: %s", seq, exc)

    def models(self) -> list[dict[str, Any]]:
        """What `GET /v1/models` shows: every installed model and its state."""
        out = []
        for name, slot in self.slots.items():
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
            for name, slot in self.slots.items()
        ]
