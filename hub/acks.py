"""Acknowledgements to devices: at most one per device and stream for each ingest batch,
published QoS 1 together, and never a reason for the ingest to stop.

An ack is cumulative ("the hub holds everything up to `hwm`"), so within a batch the
last mark of a stream says all the earlier ones did. Losing an ack costs a resend, never
a record: the agent sends unacknowledged batches again and the hub acks duplicates again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence

from outpost import wire

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]


class LinkDownError(ConnectionError):
    """The hub is not connected to the broker: nothing was published."""


class AckSet:
    """The acks one ingest batch owes, coalesced per (device, stream)."""

    def __init__(self) -> None:
        self._hwm: dict[tuple[str, wire.Stream], int] = {}
        self._refused_to: dict[tuple[str, wire.Stream], int] = {}

    def __len__(self) -> int:
        return len(self._hwm)

    def add(self, device_id: str, stream: wire.Stream, hwm: int, *, refused_to: int = 0) -> None:
        """Note the mark after one batch; `refused_to` is the end of a batch refused as a gap."""
        key = (device_id, stream)
        self._hwm[key] = max(hwm, self._hwm.get(key, 0))
        if refused_to:
            self._refused_to[key] = max(refused_to, self._refused_to.get(key, 0))

    def messages(self) -> list[tuple[str, bytes]]:
        """One (topic, payload) per device and stream, in the order they were first noted."""
        out = []
        for (device_id, stream), hwm in self._hwm.items():
            # A refused batch still matters only if the final mark has not covered it
            # (a later batch of the same ingest batch may have): then ask for a resend.
            gap = self._refused_to.get((device_id, stream), 0) > hwm
            ack = wire.Ack(stream=stream, hwm=hwm, gap=gap)
            out.append((wire.down_topic(device_id, "ack"), wire.encode("ack", ack)))
        return out


async def publish_all(
    publish: Publish | None,
    messages: Sequence[tuple[str, bytes]],
    counts: collections.Counter[str],
) -> None:
    """Publish `messages` with all of them in flight at once; count each outcome (sent,
    dropped with the link down, failed); never raise."""
    if publish is None:
        counts["dropped"] += len(messages)
        return
    # Publishing one at a time would wait a broker round trip per ack; the client keeps
    # the order in which publishes start, so several in flight lose nothing.
    results = await asyncio.gather(
        *(publish(topic, payload) for topic, payload in messages), return_exceptions=True
    )
    dropped = failed = 0
    for (topic, _), result in zip(messages, results, strict=True):
        if isinstance(result, LinkDownError):
            dropped += 1
        elif isinstance(result, Exception | asyncio.CancelledError):
            # A child cancelled alone (its connection closing); had this task been
            # cancelled, `gather` would have raised instead of returning.
            failed += 1
            logger.warning("could not publish on %s: %r", topic, result)
        elif isinstance(result, BaseException):
            raise result  # exits are not ours to swallow
    counts["sent"] += len(messages) - dropped - failed
    counts["dropped"] += dropped
    counts["failed"] += failed
    if dropped:
        logger.info("link down: dropped %d acks (their devices will resend)", dropped)
