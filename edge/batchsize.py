"""How large the next upload batch may be: as large as `batch_bytes` allows while the
link acknowledges batches quickly, smaller while it does not.

Large batches cost the agent and the hub less per record (one read, one message, one
commit and one ack for more records: a backlog drained in batches of 1,000 records took
about two thirds of the CPU per record of batches of 290). But the agent resends when its
oldest batch has waited `ack_timeout_s`, and a window of `in_flight` large batches on a
slow link can outlast that, and the window then goes again over the same link. So the
budget starts at `START_BYTES`, doubles after a full batch acknowledged within a small
share of the timeout, halves after any batch waited half of it, and drops to a quarter
when the window stalled into a resend. It never goes above the configured `batch_bytes`
nor below `FLOOR_BYTES` (a single record larger than the budget still goes, alone).

The budget counts plain record bytes, as the store reads them; how fast acks return
already reflects compression, the link and the hub.

It also says how long to wait for an ack before resending the window (`patience_s`):
`ack_timeout_s` while acks come, twice as long (with jitter) after each stall in a row,
up to `MAX_PATIENCE_S`, and back to `ack_timeout_s` at any word from the hub (`heard`).
A hub that stays silent with the broker up (its replicas down, its database failing
over) got the whole window again every `ack_timeout_s` from every device, for as long
as it lasted: the same bytes over a metered link all day, and a fleet's duplicates
queued at the broker for the hub's return.
"""

from __future__ import annotations

import random

START_BYTES = 64 * 1024  # a first batch as large as the earlier fixed default
FLOOR_BYTES = 4 * 1024
# Grow when a batch's round trip is under this share of the ack timeout per batch in the
# window: even a full window of batches twice as large then stays under half the timeout.
_QUICK_SHARE = 0.25
_SLOW_SHARE = 0.5  # shrink when a batch waited over this share of the ack timeout
# The longest wait for an ack before the window goes again. Not longer: once the hub is
# back, what was sent meanwhile may be gone (replicas keep no broker session), and only
# the next resend brings it.
MAX_PATIENCE_S = 120.0


class BatchBudget:
    """The byte size the next batch may take, from how fast earlier batches came back."""

    def __init__(self, ceiling: int, in_flight: int, ack_timeout_s: float) -> None:
        self.ceiling = ceiling
        self._floor = min(FLOOR_BYTES, ceiling)
        self._quick_s = ack_timeout_s * _QUICK_SHARE / in_flight
        self._slow_s = ack_timeout_s * _SLOW_SHARE
        self.bytes = min(START_BYTES, ceiling)
        self._ack_timeout_s = ack_timeout_s
        self.patience_s = ack_timeout_s
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    def full(self, plain_bytes: int, records: int, batch_records: int) -> bool:
        """Whether a batch of this size tells anything about a larger one: it used at
        least half the budget, or every record a batch may hold."""
        return plain_bytes * 2 >= self.bytes or records >= batch_records

    def acked(self, waits: list[tuple[float, bool]]) -> None:
        """Batches acknowledged together: how long each waited, and whether it was full."""
        if not waits:
            return
        self.patience_s = self._ack_timeout_s  # the hub answers again
        if max(wait for wait, _ in waits) > self._slow_s:
            self.bytes = max(self._floor, self.bytes // 2)
        elif any(full for _, full in waits) and all(wait < self._quick_s for wait, _ in waits):
            self.bytes = min(self.ceiling, self.bytes * 2)

    def heard(self) -> None:
        """The hub answered (an ack of any kind): it is back, so is the usual patience."""
        self.patience_s = self._ack_timeout_s

    def stalled(self) -> None:
        """No ack came within the patience: the window is resent, in smaller batches, and
        the next resend waits longer (devices that lost one hub together drift apart)."""
        self.bytes = max(self._floor, self.bytes // 4)
        grown = self.patience_s * 2 * self._random.uniform(1.0, 1.25)
        self.patience_s = max(self._ack_timeout_s, min(MAX_PATIENCE_S, grown))
