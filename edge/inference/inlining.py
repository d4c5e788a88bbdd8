"""Whether a model's next request runs on the event loop itself (inline) or on a worker.

A model that answers faster than a round trip to a worker thread costs (a small MLP
takes ~5 µs, the hop 20 to 90 µs on a 2-core machine) runs on the event loop when no
other request is using it: the hop would cost more than the work, and the loop is held
for less time than the hop would take. Whether a model is that fast is timed on its
sample at load, then followed by a running average of its answers.

For a model that may be fast (its load reading under `PROBE_BELOW_LINES` times the
line), only the answers run inline count: what one takes on a worker is not what it
would take here (a worker waits for the GIL the loop holds between its callbacks: 5 ms
for a 20 µs answer beside a busy loop), and counted, they kept a model the average once
carried over the line on its workers for good. While it is over, one request in
`PROBE_EVERY` runs inline anyway, as a probe, and counts like any inline answer: many
fast probes bring it back, one cheap request among costly ones (a caller's nested
lists) does not.
"""

from __future__ import annotations

INLINE_BELOW_S = 100e-6
_WEIGHT = 0.05  # of each new answer in the running average
# A model that may be fast but reads slow of late runs one request in this many inline
# anyway, to see whether it still is; each probe that finds it slow doubles the wait, up
# to the max.
PROBE_EVERY = 16
PROBE_EVERY_MAX = 1024
# A model whose sample read under this many times the line at load (a busy moment may
# have slowed it) may be fast: probed, and judged on its inline answers only.
PROBE_BELOW_LINES = 10


class Inlining:
    """One model's choice, from the work its answers took (seconds)."""

    def __init__(self, below_s: float = INLINE_BELOW_S) -> None:
        self.below_s = below_s  # the line: a model whose work averages under it runs inline
        self.work_s = float("inf")  # the running average; unknown (inf) means not inline
        self.at_load_s = float("inf")  # its sample's, at load
        self._probe_every = PROBE_EVERY
        self._since_probe = 0

    def loaded(self, work_s: float) -> None:
        """Its sample's reading at load: the average starts there, capped like an
        answer's (so a slow moment at load is forgotten as fast as a slow answer)."""
        self.at_load_s = work_s
        self.work_s = min(work_s, 2 * self.below_s)

    @property
    def fast_at_load(self) -> bool:
        return self.at_load_s < self.below_s

    @property
    def may_be_fast(self) -> bool:
        return self.at_load_s < PROBE_BELOW_LINES * self.below_s

    def inline(self, outstanding: int) -> bool:
        """Whether a request arriving now, with `outstanding` others, runs inline (a
        probe aside)."""
        return outstanding == 0 and self.work_s < self.below_s

    def runs_here(self, outstanding: int) -> tuple[bool, bool]:
        """Whether a request arriving now runs inline, and whether as a probe (call
        `probed` with its work after)."""
        if self.inline(outstanding):
            return True, False
        if outstanding or not self.may_be_fast:
            return False, False
        self._since_probe += 1
        if self._since_probe < self._probe_every:
            return False, False
        self._since_probe = 0
        return True, True

    def count(self, work_s: float, *, here: bool) -> None:
        """An answer's work (`here`: run inline). Waiting for an interpreter is not work:
        a busy model is not a slow one. One answer held up by the scheduler (another
        process on its core) takes milliseconds: counted whole, a few a second kept a
        20 µs model's average at 55-93 µs in a loaded agent, now and then over the line
        and on the workers, where each hop cost more than the model. So one answer
        counts for at most twice the line: enough to push a model that is really slow
        over it."""
        if not here and self.may_be_fast:
            return
        work_s = min(work_s, 2 * self.below_s)
        if self.work_s == float("inf"):
            self.work_s = work_s
        else:
            self.work_s += (work_s - self.work_s) * _WEIGHT

    def probed(self, work_s: float) -> None:
        """A probe's work, counted as an inline answer's. A slow one makes the next probe
        wait twice as long; a fast one brings the next back to `PROBE_EVERY`."""
        self.count(work_s, here=True)
        if work_s < self.below_s:
            self._probe_every = PROBE_EVERY
        else:
            self._probe_every = min(2 * self._probe_every, PROBE_EVERY_MAX)
