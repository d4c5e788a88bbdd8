"""The queue between the broker and the ingest: bounded, per device, rate-limited, fair.

Every message the broker delivers to the hub goes through here before anything decodes
it. A device holds a valid certificate, but it may still be compromised or broken: one
must not be able to grow the hub's memory without bound or push other devices' messages
out of the way. So, per device:

- a message and a byte budget (token buckets: a burst, then a sustained rate). What
  goes past them is dropped here, before decoding, and counted; the device shows as
  throttled (API, `/metrics`) for a while after. Bytes are what a message costs the
  ingest (hub/mqtt/charge.py): a compressed batch counts at its decompressed size;
- a queue of at most `queued` messages and `queued_bytes` bytes, and the queue as a
  whole is bounded by count and bytes too;
- the ingest takes messages one device at a time, round robin, so a device with ten
  thousand queued messages delays another device's next message by one, not by ten
  thousand.

Dropping is safe for honest devices, which never come near the budgets: their uploads
are resent until acknowledged, their heartbeats and hellos repeat. The broker has
already acknowledged a dropped QoS 1 message to its sender; that is why the budgets are
generous and why only the device over them loses anything.

Drops past a device's own budget or queue count toward holding it off
(hub/mqtt/holds.py), with two exceptions: those because the intake as a whole is full
(not that device's doing), and those while the hub catches up. The intake sees the
broker's delivery rate, not the device's sending rate: after the hub was away (its link
resumed a session the broker kept, perhaps for days) or its event loop was held (more
than `STALL_S`), the broker hands over what it queued meanwhile at wire speed, and an
honest device's backlog looks like a flood. So for `CATCH_UP_S` after either, drops are
counted as ever (metrics, `throttled`) but not toward a hold (`Throttled.counted`); a
device still flooding after that is judged on what it drops then.

It is an `asyncio.Queue` so that aiomqtt fills it directly (`queue_type`), on the event
loop, as the broker's packets are read.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from hub.config import HubConfig
from hub.mqtt import charge
from outpost import wire

THROTTLED_FOR_S = 300.0  # a device stays flagged this long after its last drop
RECENT_S = 60.0  # the window of `Throttled.recent` and `.counted` (holds judge by the latter)
MAX_TRACKED = 100_000  # devices whose budgets are remembered; the idlest forgotten first
# Bytes one device may have waiting: its default byte burst, and no less than the largest
# payload a hub may be configured to take (max_payload_bytes is at most 16 MiB). An
# honest device's few batches, drained round robin, never come near it; without it, one
# within its byte rate queued 2,000 x 256 KiB = 512 MiB while the ingest was slow.
DEVICE_QUEUED_BYTES = 16 << 20
# Bytes waiting in all: 32 of the link's 4 MiB batches (hub/mqtt/link.py), some 15 s of
# the store's work; waiting longer in the hub helps nobody (devices resend what is not
# acknowledged), and a small hub can hold it beside everything else.
TOTAL_QUEUED_BYTES = 128 << 20
# An event loop held this long is a stall: the broker's messages waited meanwhile. A
# shorter one replays less than a device's burst absorbs (honest devices send far below
# their rate), and a slow machine's longest batch stays well within it.
STALL_S = 5.0
# How long drops do not count toward holds once the hub catches up (see above). The
# broker's queue for the hub holds at most 200,000 messages (hub/broker/mosquittoconf.py,
# EMQX's max_mqueue_len the same): the hub reads and drops them in seconds, far within.
CATCH_UP_S = 60.0


@dataclass(frozen=True)
class Budget:
    """What one device may send: `rate` messages and `bytes_rate` bytes per second after
    a burst of `burst` messages and `bytes_burst` bytes; at most `queued` messages and
    `queued_bytes` bytes waiting. Bytes are costs (hub/mqtt/charge.py) within the ingest's
    `payload_limit`."""

    rate: float = 1000.0
    burst: float = 2000.0
    bytes_rate: float = 8 * 1024 * 1024
    bytes_burst: float = 16 * 1024 * 1024
    queued: int = 2000
    total_queued: int = 100_000
    queued_bytes: int = DEVICE_QUEUED_BYTES
    total_queued_bytes: int = TOTAL_QUEUED_BYTES
    payload_limit: int = wire.MAX_PAYLOAD_BYTES

    @classmethod
    def of(cls, config: HubConfig) -> Budget:
        return cls(
            rate=config.device_msgs_per_s,
            burst=config.device_msgs_burst,
            bytes_rate=config.device_bytes_per_s,
            bytes_burst=2 * config.device_bytes_per_s,
            queued=config.device_queue,
            payload_limit=config.max_payload_bytes,
        )


@dataclass
class _Window:
    """Drops in the current and the previous RECENT_S window (a sliding-window estimate)."""

    start: float = 0.0
    drops: int = 0
    previous: int = 0

    def add(self, now: float) -> None:
        self._roll(now)
        self.drops += 1

    def count(self, now: float) -> int:
        """About how many in the last RECENT_S seconds: this window's and the part of
        the previous window's that overlaps them."""
        self._roll(now)
        overlap = 1.0 - (now - self.start) / RECENT_S
        return self.drops + int(self.previous * overlap)

    def _roll(self, now: float) -> None:
        elapsed = now - self.start
        if elapsed >= RECENT_S:
            # One window on: the current becomes the previous; two or more: both empty.
            self.previous = self.drops if elapsed < 2 * RECENT_S else 0
            self.drops = 0
            self.start = now - elapsed % RECENT_S


@dataclass
class _Device:
    tokens: float
    byte_tokens: float
    updated: float
    # Messages waiting, each with its cost (hub/mqtt/charge.py), and the sum of those.
    queue: collections.deque[tuple[aiomqtt.Message, int]] = field(default_factory=collections.deque)
    queued_bytes: int = 0
    dropped: int = 0  # messages dropped here, since the hub started
    last_drop: float = 0.0  # monotonic time of the last drop
    recent: _Window = field(default_factory=_Window)  # every drop
    counted: _Window = field(default_factory=_Window)  # those that count toward a hold

    def drop(self, now: float, *, counts: bool) -> None:
        self.dropped += 1
        self.last_drop = now
        self.recent.add(now)
        if counts:
            self.counted.add(now)


@dataclass(frozen=True)
class Throttled:
    """A device that went past its budget recently."""

    device_id: str
    dropped: int  # since the hub started
    seconds_ago: float  # since its last drop
    recent: int  # about how many in the last RECENT_S seconds
    counted: int  # how many of those count toward a hold (hub/mqtt/holds.py)


class DeviceIntake(asyncio.Queue[aiomqtt.Message]):
    """Per-device bounded, rate-limited queues, drained round robin.

    `dropped` counts drops by (kind, reason) with kinds outside the contract as "other",
    as `Ingest.outcomes` does (the two share one counter in the hub).
    """

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        dropped: collections.Counter[tuple[str, str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget or Budget()
        self.dropped = dropped if dropped is not None else collections.Counter()
        self._clock = clock
        super().__init__()

    # asyncio.Queue's storage hooks: `put_nowait` calls `_put`, `get_nowait` `_get`.
    def _init(self, maxsize: int) -> None:
        self._devices: dict[str, _Device] = {}
        self._turns: collections.deque[str] = collections.deque()  # devices with messages
        self._size = 0
        self._bytes = 0  # the costs of all waiting messages
        # When the event loop last showed it ran (`beat`, a put); None: nobody beats, so
        # no stall is judged. Drops before `_excused_until` do not count toward holds.
        self._beat: float | None = None
        self._excused_until = float("-inf")

    def qsize(self) -> int:
        return self._size

    def empty(self) -> bool:
        return self._size == 0

    def full(self) -> bool:
        return False  # never refuse a put (aiomqtt would log each one): drop in `_put`

    def beat(self) -> None:
        """Say the event loop is running; called every second or so (hub/mqtt/holds.py).
        A beat or a message that comes more than `STALL_S` after the last one means the
        loop was held meanwhile: the hub catches up."""
        now = self._clock()
        self._judge_stall(now)
        self._beat = now  # from the first beat on, stalls are judged

    def catch_up(self) -> None:
        """The broker is handing over what it kept while the hub was away: for
        `CATCH_UP_S`, drops do not count toward holds."""
        self._excused_until = self._clock() + CATCH_UP_S

    def catching_up(self) -> bool:
        return self._clock() < self._excused_until

    def _judge_stall(self, now: float) -> None:
        # Both the beat and the first message after a stall judge it: the loop reads
        # the socket before it runs the timers that came due meanwhile.
        if self._beat is not None:
            if now - self._beat > STALL_S:
                self._excused_until = now + CATCH_UP_S
            self._beat = now

    def _put(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        device_id, kind = charge.device_and_kind(topic)
        now = self._clock()
        self._judge_stall(now)
        device = self._device(device_id, now)
        b = self.budget
        size = len(message.payload) if isinstance(message.payload, bytes | str) else 0
        if device.tokens >= 1.0 and device.byte_tokens >= size:
            # Opened only within the budget (a cost is never below the size).
            size = charge.cost(kind, message.payload, b.payload_limit)
        reason = ""
        if device.tokens < 1.0:
            reason = "rate"
        elif device.byte_tokens < size:
            reason = "bytes"
        elif len(device.queue) >= b.queued or device.queued_bytes + size > b.queued_bytes:
            reason = "queue"
        elif self._size >= b.total_queued or self._bytes + size > b.total_queued_bytes:
            reason = "full"  # counted as `queue`; not this device's doing alone
        if reason:
            device.drop(now, counts=reason != "full" and now >= self._excused_until)
            label = "queue" if reason == "full" else reason
            self.dropped[(kind if kind in wire.UP_KINDS else "other", f"dropped:{label}")] += 1
            return
        device.tokens -= 1.0
        device.byte_tokens -= size
        if not device.queue:
            self._turns.append(device_id)
        device.queue.append((message, size))
        device.queued_bytes += size
        self._size += 1
        self._bytes += size

    def _get(self) -> aiomqtt.Message:
        device_id = self._turns.popleft()
        device = self._devices[device_id]
        message, size = device.queue.popleft()
        if device.queue:
            self._turns.append(device_id)  # its next message waits for the others' turn
        device.queued_bytes -= size
        self._size -= 1
        self._bytes -= size
        return message

    def queued_bytes(self) -> int:
        """The costs of the messages waiting (hub/mqtt/charge.py)."""
        return self._bytes

    def throttled(self) -> list[Throttled]:
        """Devices that went past their budget in the last `THROTTLED_FOR_S` seconds."""
        now = self._clock()
        return sorted(
            (
                Throttled(
                    device_id,
                    d.dropped,
                    now - d.last_drop,
                    d.recent.count(now),
                    d.counted.count(now),
                )
                for device_id, d in self._devices.items()
                if d.dropped and now - d.last_drop < THROTTLED_FOR_S
            ),
            key=lambda t: -t.dropped,
        )

    def _device(self, device_id: str, now: float) -> _Device:
        b = self.budget
        device = self._devices.get(device_id)
        if device is None:
            if len(self._devices) >= MAX_TRACKED:
                self._forget_idlest()
            device = self._devices[device_id] = _Device(b.burst, b.bytes_burst, now)
            return device
        elapsed = now - device.updated
        device.tokens = min(b.burst, device.tokens + elapsed * b.rate)
        device.byte_tokens = min(b.bytes_burst, device.byte_tokens + elapsed * b.bytes_rate)
        device.updated = now
        return device

    def _forget_idlest(self) -> None:
        idle = [k for k, d in self._devices.items() if not d.queue]
        if idle:
            del self._devices[min(idle, key=lambda k: self._devices[k].updated)]


def queue_type(intake: DeviceIntake) -> Any:
    """A `queue_type` for aiomqtt that hands it this intake (it calls the type once)."""

    def make(maxsize: int = 0) -> DeviceIntake:
        return intake

    return make
