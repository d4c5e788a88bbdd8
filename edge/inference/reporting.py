"""Which local inferences become results, and their records on the results stream (sent
to the hub through the store, like every record)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edge.rollup import Tally
from edge.store import AgentStore, StoreWriteError, StreamFullError
from outpost.modelbundle import Manifest

if TYPE_CHECKING:  # the runner imports numpy, which waits for a model to load
    from edge.inference.runner import Inference

ReportMode = Literal["all", "flagged", "none"]


@dataclass(frozen=True)
class Reporting:
    """Which local inferences become results.

    `flagged`: those whose label is not the model's normal label, or whose confidence is
    below `confidence_below`. Set from the agent's settings, then from each policy.
    """

    mode: ReportMode = "flagged"
    confidence_below: float = 0.6
    explain_flagged: float = 0.0  # share of recorded flagged results also explained

    def reason(self, normal_label: str, inference: Inference) -> str | None:
        """Say why this inference is recorded, or None when it is not."""
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


class Reporter:
    """Records the answers that the reporting rules ask for on the results stream."""

    def __init__(self, store: AgentStore, tally: Tally) -> None:
        self._store = store
        self._tally = tally  # a refused record counts as an error in the next roll-up

    async def report(
        self,
        rules: Reporting,
        manifest: Manifest,
        inference: Inference,
        context: dict[str, Any] | None,
    ) -> Outcome:
        """Record `inference` if `rules` say so; say what became of it."""
        reason = rules.reason(manifest.normal_label, inference)
        seq, error = None, None
        if reason is not None:
            record = result_record(manifest.name, manifest.version, manifest.labels, inference)
            record.update(flag=reason, context=context or {})
            try:
                # The caller waits for the commit, not for the disk's sync: an
                # answer's record survives a kill of the agent at once, and a power
                # cut once the sync that follows within milliseconds has run (`Confirm`).
                appended = await self._store.append("results", [record], confirm="written")
                seq = appended.first_seq
            except StreamFullError as exc:
                self._tally.error("stream_full")
                error = f"stream_full: {exc.reason}"
            except StoreWriteError as exc:  # a full or failing disk: answered, not recorded
                self._tally.error("stream_full")
                error = f"not_recorded: {exc.reason}"
        return Outcome(inference, manifest.version, seq, error, manifest.labels)


def result_record(
    name: str, version: str, labels: list[str], inference: Inference
) -> dict[str, Any]:
    """Return an inference as a record of the results stream."""
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
