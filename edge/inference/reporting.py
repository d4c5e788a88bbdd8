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
FLAGS = frozenset({"label", "low_confidence"})  # the reasons that flag an answer
MAX_INPUT_BYTES = 64 * 1024  # a larger input stays on the device, even when allowed


@dataclass(frozen=True)
class Reporting:
    """Which local inferences become results.

    `flagged`: those whose label is not the model's normal label, or whose confidence is
    below `confidence_below`. Set from the agent's settings, then from each policy.
    """

    mode: ReportMode = "flagged"
    confidence_below: float = 0.6
    explain_flagged: float = 0.0  # share of recorded flagged results also explained
    flagged_inputs: bool = False  # flagged results carry their int8 input (to the hub)

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
            if rules.flagged_inputs and reason in FLAGS:
                carried = input_field(inference)
                if carried is not None:
                    record["input"] = carried
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


def input_field(inference: Inference) -> dict[str, Any] | None:
    """The int8 tensor an answer ran on, as a flagged result carries it (policy
    inference.flagged_inputs) for the hub to explain later: its bytes as they are (a
    96x96 image: 9 KiB), not as a list of numbers; None when over MAX_INPUT_BYTES."""
    tensor = inference.tensor
    if tensor is None or tensor.nbytes > MAX_INPUT_BYTES:
        return None
    return {"dtype": "int8", "shape": list(tensor.shape), "data": tensor.tobytes()}
