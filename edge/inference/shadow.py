"""Shadow candidates: a model version installed beside the live one, never serving, run
on a sampled share of the live inputs so the hub can judge it before it serves.

The live answer never waits for the candidate: the comparison is scheduled once the live
answer exists and runs on the candidate's own runner (its own interpreter and threads),
after the caller has its answer. A sampled input is skipped when the device is over the
policy's CPU budget for shadows, or when the candidate's queue is full (a slow
candidate sheds comparisons, never live work). What both answered is counted in the
metrics roll-up's `shadow` section (edge/rollup.py), so a site without a link reports
it later like any roll-up. Only where the policy lets inputs leave the device
(shadow.disagreements > 0), a bounded sample of the inputs the two disagreed on goes
with each roll-up as `shadow.disagreement` events (masked on upload like every record).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.rollup import Tally
from outpost.modelbundle import TensorSpec

if TYPE_CHECKING:
    from edge.inference.runner import Inference, ModelRunner

logger = logging.getLogger(__name__)

MAX_INPUT_BYTES = 64 * 1024  # a disagreeing input larger than this (as JSON) is not kept


class Shadows:
    """The candidates in shadow, one per model name, and their comparisons."""

    def __init__(self, tally: Tally, *, rng: random.Random | None = None) -> None:
        self._tally = tally
        self._rng = rng or random.Random()  # noqa: S311  # sampling, not secrecy
        self._runners: dict[str, ModelRunner] = {}
        self._running: set[asyncio.Task[None]] = set()  # kept referenced until done
        self.sample_share = 0.1  # set by policy (shadow.sample_share)
        self.overloaded: Callable[[], bool] = lambda: False  # CPU over shadow.cpu_max_percent
        self.skipped = 0  # sampled inputs not compared (busy, over budget, failed)
        # Disagreeing inputs kept per candidate between two roll-ups (policy
        # shadow.disagreements; 0, the default: inputs never leave the device).
        self.reservoir_size = 0
        self._disagreed: dict[tuple[str, str], int] = {}  # seen since the last take
        self._kept: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def candidate(self, name: str) -> str | None:
        """The version in shadow for model `name`, if any."""
        runner = self._runners.get(name)
        return runner.manifest.version if runner is not None else None

    def versions(self) -> dict[str, str]:
        return {name: r.manifest.version for name, r in self._runners.items()}

    async def put(self, name: str, runner: ModelRunner) -> None:
        """Shadow `runner` (loaded) for model `name`, replacing any candidate before it."""
        old = self._runners.pop(name, None)
        self._runners[name] = runner
        if old is not None:
            await asyncio.to_thread(old.close)

    async def drop(self, name: str) -> None:
        """No candidate for `name` any more (the roll-out ended or was promoted)."""
        old = self._runners.pop(name, None)
        if old is not None:
            await asyncio.to_thread(old.close)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        for name in list(self._runners):
            await self.drop(name)

    def after(
        self,
        name: str,
        live_version: str,
        value: Any,
        dtype: str,
        live: Inference,
        live_input: TensorSpec | None = None,
    ) -> None:
        """The live version answered `value`: compare the candidate on it, if sampled.
        Returns at once; the comparison runs later."""
        runner = self._runners.get(name)
        if runner is None or self._rng.random() >= self.sample_share:
            return
        if self.overloaded():
            self.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._compare(name, live_version, runner, value, dtype, live, live_input),
            name="agent.shadow",
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _compare(
        self,
        name: str,
        live_version: str,
        runner: ModelRunner,
        value: Any,
        dtype: str,
        live: Inference,
        live_input: TensorSpec | None,
    ) -> None:
        await asyncio.sleep(0)  # let the caller's answer go out first
        try:
            if live.tensor is not None and runner.manifest.input == live_input:
                # The live path's int8 tensor: converting the caller's value again (a
                # millisecond for an image, holding the GIL) would slow the live path.
                candidate = await runner.infer_tensor(live.tensor)
            else:
                candidate = await runner.infer(value, dtype)
        except Exception as exc:  # busy, or a fault of the candidate: never the live path's
            self.skipped += 1
            logger.debug("shadow %s %s skipped an input: %s", name, runner.manifest.version, exc)
            return
        if self._runners.get(name) is not runner:  # replaced meanwhile: not its comparison
            return
        self._tally.shadow(name, live_version, runner.manifest.version, live, candidate)
        if live.label != candidate.label and self.reservoir_size:
            self._keep(name, live_version, runner.manifest.version, value, dtype, live, candidate)

    def take_disagreements(self) -> list[dict[str, Any]]:
        """The disagreeing inputs kept since the last call (each an event's fields), at
        most `reservoir_size` per candidate, each a uniform pick of those seen."""
        kept = [item for items in self._kept.values() for item in items]
        self._kept, self._disagreed = {}, {}
        return kept

    def _keep(
        self,
        name: str,
        live_version: str,
        candidate_version: str,
        value: Any,
        dtype: str,
        live: Inference,
        candidate: Inference,
    ) -> None:
        """Reservoir sampling (Algorithm R): every disagreement seen has the same chance
        to be kept, in bounded memory however many there are."""
        try:
            size = len(json.dumps(value))
        except (TypeError, ValueError):  # not JSON-shaped (an array from msgpack): as a list
            value = getattr(value, "tolist", lambda: None)()
            size = len(json.dumps(value)) if value is not None else MAX_INPUT_BYTES + 1
        if size > MAX_INPUT_BYTES:
            return
        key = (name, candidate_version)
        seen = self._disagreed.get(key, 0) + 1
        self._disagreed[key] = seen
        item = {
            "model": name,
            "live": live_version,
            "candidate": candidate_version,
            "live_label": live.label,
            "candidate_label": candidate.label,
            "live_confidence": round(live.confidence, 4),
            "candidate_confidence": round(candidate.confidence, 4),
            "dtype": dtype,
            "input": value,
        }
        kept = self._kept.setdefault(key, [])
        if len(kept) < self.reservoir_size:
            kept.append(item)
        elif (slot := self._rng.randrange(seen)) < self.reservoir_size:
            kept[slot] = item
