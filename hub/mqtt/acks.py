"""Acknowledgements to devices: at most one per device and stream for each ingest batch,
published QoS 1 without waiting, and never a reason for the ingest to stop.

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
        self._numbered_by: dict[tuple[str, wire.Stream], str] = {}

    def __len__(self) -> int:
        return len(self._hwm)

    def add(
        self,
        device_id: str,
        stream: wire.Stream,
        hwm: int,
        *,
        refused_to: int = 0,
        numbered_by: str = "",
    ) -> None:
        """Note the mark after one batch; `refused_to` is the end of a batch refused as a
        gap; `numbered_by` answers a hello that named its store (see wire.Ack)."""
        key = (device_id, stream)
        self._hwm[key] = max(hwm, self._hwm.get(key, 0))
        if refused_to:
            self._refused_to[key] = max(refused_to, self._refused_to.get(key, 0))
        if numbered_by:
            self._numbered_by[key] = numbered_by

    def messages(self) -> list[tuple[str, bytes]]:
        """One (topic, payload) per device and stream, in the order they were first noted."""
        out = []
        for (device_id, stream), hwm in self._hwm.items():
            # A refused batch still matters only if the final mark has not covered it
            # (a later batch of the same ingest batch may have): then ask for a resend.
            gap = self._refused_to.get((device_id, stream), 0) > hwm
            by = self._numbered_by.get((device_id, stream), "")
            ack = wire.Ack(stream=stream, hwm=hwm, gap=gap, numbered_by=by)
            out.append((wire.down_topic(device_id, "ack"), wire.encode("ack", ack)))
        return out


# Acks started and not yet confirmed by the broker, at most. Past it the ingest waits, and
# the intake's bounded queue fills behind it, instead of publishes piling up in the
# client: aiomqtt scans every pending call at each publish, so thousands pending made
# each publish cost thousands of steps.
MAX_IN_FLIGHT = 200


class Downlinks:
    """Acks on their way to devices, published QoS 1 without holding up the ingest.

    The ingest starts an ingest batch's acks and goes on with its next batch; the
    broker's confirmations come back meanwhile. Waiting for them in the ingest, as it
    once did, put a broker round trip between every two batches: during a ramp of hellos
    the round trips, not the hub's work, set how long a hello waited for its answer.
    The client publishes in the order the publishes start, so a device's acks stay in
    order; at most `max_in_flight` are unconfirmed at once, and `send` waits past that.
    Each outcome is counted (sent, dropped with the link down, failed); nothing raises.
    """

    def __init__(
        self,
        publish: Publish | None,
        counts: collections.Counter[str],
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._publish = publish
        self._counts = counts
        self._room = asyncio.Semaphore(max_in_flight)
        self._flying: set[asyncio.Task[None]] = set()
        self._link_down = False  # said once per outage, not once per ack

    def __len__(self) -> int:
        """Publishes started and not yet confirmed or failed."""
        return len(self._flying)

    async def send(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Start publishing `messages` in order; return once all have started."""
        publish = self._publish
        if publish is None:
            self._counts["dropped"] += len(messages)
            return
        for topic, payload in messages:
            await self._room.acquire()
            task = asyncio.create_task(self._one(publish, topic, payload))
            self._flying.add(task)
            task.add_done_callback(self._flying.discard)

    async def drain(self) -> None:
        """Wait until every publish started so far has ended."""
        while self._flying:
            await asyncio.wait(set(self._flying))

    async def _one(self, publish: Publish, topic: str, payload: bytes) -> None:
        try:
            await publish(topic, payload)
        except LinkDownError:
            self._counts["dropped"] += 1
            if not self._link_down:
                self._link_down = True
                logger.info("link down: dropping acks until it is back (devices will resend)")
        except Exception as exc:
            self._counts["failed"] += 1
            logger.warning("could not publish on %s: %r", topic, exc)
        else:
            self._counts["sent"] += 1
            self._link_down = False
        finally:
            self._room.release()
