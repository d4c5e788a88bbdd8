"""Roll-back on repeated faults: a newly activated version that fails in use, request
after request, gives way to the version it replaced.

`FaultWatch` is the decision alone (counts, no I/O), so it can be tested without an
interpreter; `WatchedRunner` feeds it the outcome of every inference, whoever asks for
it (the local API and the task runner both call the runner directly), and counts each
answer and error for the metrics roll-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.inference.runner import Inference, ModelBusy, ModelFault, ModelRunner
from edge.inference.tensors import InputError
from edge.rollup import Tally

# Consecutive faults that condemn a version. One fault can be a bad input the checks
# missed; five in a row, with no success between, is the model (or its runtime).
FAULT_LIMIT = 5


@dataclass
class FaultWatch:
    """Consecutive faults of one loaded version, and the version to fall back to.

    `fallback` is set only for a version the deployer activated over another one: a
    version that was already serving at start has nothing proven to return to.
    """

    limit: int = FAULT_LIMIT
    fallback: str | None = None
    streak: int = 0
    last_fault: str = ""

    def success(self) -> None:
        self.streak = 0

    def fault(self, reason: str) -> str | None:
        """Count a fault; return the version to roll back to when the streak reaches
        the limit (once: the fallback is used up)."""
        self.streak += 1
        self.last_fault = reason
        if self.fallback is None or self.streak < self.limit:
            return None
        fallback, self.fallback = self.fallback, None
        return fallback


# Called on the event loop with the runner that tripped, the fallback and the reason.
Tripped = Callable[["WatchedRunner", str, str], None]


class WatchedRunner(ModelRunner):
    """A `ModelRunner` whose inferences are counted by a `FaultWatch`."""

    def __init__(
        self,
        *args: Any,
        watch: FaultWatch,
        tripped: Tripped,
        tally: Tally | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.watch = watch
        self._tripped = tripped
        self._tally = tally or Tally()  # counted for the next metrics roll-up

    async def infer(self, value: Any, dtype: str = "float32") -> Inference:
        # Only `ModelFault` counts: a bad input (`InputError`) or a full queue
        # (`ModelBusy`) says nothing about the model, and neither clears a streak.
        try:
            inference = await super().infer(value, dtype)
        except ModelFault as exc:
            self._tally.error("model_fault")
            fallback = self.watch.fault(str(exc))
            if fallback is not None:
                reason = f"{self.watch.streak} faults in a row, the last: {exc}"
                self._tripped(self, fallback, reason)
            raise
        except ModelBusy:
            self._tally.error("busy")
            raise
        except InputError:
            self._tally.error("bad_input")
            raise
        self.watch.success()
        m = self.manifest
        self._tally.inference(
            m.name, m.version, inference.label, inference.confidence, inference.latency_ms
        )
        return inference
