"""The queue between the broker and the ingest: bounded, per device, rate-limited, fair.

Every message the broker delivers to the hub goes through here before anything decodes
it. A device holds a valid certificate, but it may still be compromised or broken: one
must not be able to grow the hub's memory without bound or push other devices' messages
out of the way. So, per device:

- a message and a byte budget (token buckets: a burst, then a sustained rate). What
  goes past them is dropped here, before decoding, and counted; the device shows as
  throttled (API, `/metrics`) for a while after;
- a queue of at most `per_device` messages, and the queue as a whole is bounded too;
- the ingest takes messages one device at a time, round robin, so a device with ten
  thousand queued messages delays another device's next message by one, not by ten
  thousand.

Dropping is safe for honest devices, which never come near the budgets: their uploads
are resent until acknowledged, their heartbeats and hellos repeat. The broker has
already acknowledged a dropped QoS 1 message to its sender; that is why the budgets are
generous and why only the device over them loses anything.

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
from outpost import wire

_PREFIX = wire.TOPIC_PREFIX + "/"
THROTTLED_FOR_S = 300.0  # a device stays flagged this long after its last drop
RECENT_S = 60.0  # the window of `Throttled.recent`, which hub/mqtt/holds.py judges by
MAX_TRACKED = 100_000  # devices whose budgets are remembered; the idlest forgotten first


@dataclass(frozen=True)
class Budget:
    """What one device may send: `rate` messages and `bytes_rate` bytes per second after
    a burst of `burst` messages and `bytes_burst` bytes; at most `queued` waiting."""

    rate: float = 1000.0
    burst: float = 2000.0
    bytes_rate: float = 8 * 1024 * 1024
    bytes_burst: float = 16 * 1024 * 1024
    queued: int = 2000
    total_queued: int = 100_000

    @classmethod
    def of(cls, config: HubConfig) -> Budget:
        return cls(
            rate=config.device_msgs_per_s,
            burst=config.device_msgs_burst,
            bytes_rate=config.device_bytes_per_s,
            bytes_burst=2 * config.device_bytes_per_s,
            queued=config.device_queue,
        )


@dataclass
class _Device:
    tokens: float
    byte_tokens: float
    updated: float
    queue: collections.deque[aiomqtt.Message] = field(default_factory=collections.deque)
    dropped: int = 0  # messages dropped here, since the hub started
    last_drop: float = 0.0  # monotonic time of the last drop
    # Drops in the current and the previous RECENT_S window (a sliding-window estimate).
    window_start: float = 0.0
    window_drops: int = 0
    previous_drops: int = 0

    def drop(self, now: float) -> None:
        self.dropped += 1
        self.last_drop = now
        self._roll(now)
        self.window_drops += 1

    def recent(self, now: float) -> int:
        """About how many messages were dropped in the last RECENT_S seconds: this
        window's drops and the part of the previous window's that overlaps them."""
        self._roll(now)
        overlap = 1.0 - (now - self.window_start) / RECENT_S
        return self.window_drops + int(self.previous_drops * overlap)

    def _roll(self, now: float) -> None:
        elapsed = now - self.window_start
        if elapsed >= RECENT_S:
            # One window on: the current becomes the previous; two or more: both empty.
            self.previous_drops = self.window_drops if elapsed < 2 * RECENT_S else 0
            self.window_drops = 0
            self.window_start = now - elapsed % RECENT_S


@dataclass(frozen=True)
class Throttled:
    """A device that went past its budget recently."""

    device_id: str
    dropped: int  # since the hub started
    seconds_ago: float  # since its last drop
    recent: int  # about how many in the last RECENT_S seconds


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

    def qsize(self) -> int:
        return self._size

    def empty(self) -> bool:
        return self._size == 0

    def full(self) -> bool:
        return False  # never refuse a put (aiomqtt would log each one): drop in `_put`

    def _put(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        device_id, kind = _device_and_kind(topic)
        now = self._clock()
        device = self._device(device_id, now)
        size = len(message.payload) if isinstance(message.payload, bytes | str) else 0
        reason = ""
        if device.tokens < 1.0:
            reason = "rate"
        elif device.byte_tokens < size:
            reason = "bytes"
        elif len(device.queue) >= self.budget.queued or self._size >= self.budget.total_queued:
            reason = "queue"
        if reason:
            device.drop(now)
            self.dropped[(kind if kind in wire.UP_KINDS else "other", f"dropped:{reason}")] += 1
            return
        device.tokens -= 1.0
        device.byte_tokens -= size
        if not device.queue:
            self._turns.append(device_id)
        device.queue.append(message)
        self._size += 1

    def _get(self) -> aiomqtt.Message:
        device_id = self._turns.popleft()
        queue = self._devices[device_id].queue
        message = queue.popleft()
        if queue:
            self._turns.append(device_id)  # its next message waits for the others' turn
        self._size -= 1
        return message

    def throttled(self) -> list[Throttled]:
        """Devices that went past their budget in the last `THROTTLED_FOR_S` seconds."""
        now = self._clock()
        return sorted(
            (
                Throttled(device_id, d.dropped, now - d.last_drop, d.recent(now))
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


def _device_and_kind(topic: str) -> tuple[str, str]:
    """The device id and kind of an `up` topic, cheaply; anything else is one bucket
    (the broker's ACL lets devices write only their own contract topics)."""
    if topic.startswith(_PREFIX):
        parts = topic[len(_PREFIX) :].split("/", 2)
        if len(parts) == 3:
            return parts[0], parts[2]
    return "?", "?"


def queue_type(intake: DeviceIntake) -> Any:
    """A `queue_type` for aiomqtt that hands it this intake (it calls the type once)."""

    def make(maxsize: int = 0) -> DeviceIntake:
        return intake

    return make
