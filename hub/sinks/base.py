"""What every sink is: a connection to one bus that publishes CloudEvents 1.0 events in
order and says when the bus has them (acknowledged, confirmed or answered 2xx).

The drain (drain.py) hands a sink the outbox's next events in outbox order; a sink
publishes them in that order and returns only once every one is acknowledged, so the
drain may move the sink's cursor past them. Each event's `id` is its dedupe key on the
bus (JetStream `Nats-Msg-Id`, AMQP `message_id`, webhook `ce-id`): an event published
again after a crash is one a consumer can drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

TYPE_PREFIX = "org.outpost."
CONTENT_TYPE = "application/cloudevents+json"
# msgspec, not json: every event is encoded once per sink on the drain's path (a third
# of the NATS sink's time per event with json.dumps; docs/benchmarks.md).
_JSON = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class Event:
    """One CloudEvents 1.0 event, as every sink sends it (structured mode, JSON)."""

    id: str  # unique and stable: the dedupe key
    type: str  # org.outpost.<area>.<what>, e.g. org.outpost.task.succeeded
    source: str  # the hub (its URL)
    subject: str  # the device id ("" for fleet-wide events, e.g. a roll-out's progress)
    time: str  # RFC 3339, UTC
    data: dict[str, Any]

    def document(self) -> dict[str, Any]:
        """The event as a CloudEvents JSON object."""
        doc: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.data,
        }
        if self.subject:
            doc["subject"] = self.subject
        return doc

    def body(self) -> bytes:
        """The event as the bytes a sink sends (compact JSON, keys sorted, UTF-8)."""
        return _JSON.encode(self.document())

    def topic(self) -> str:
        """`outpost.<area>.<what>.<device>` (`_` for no device): a NATS subject and an
        AMQP routing key, so consumers filter with the bus's own wildcards."""
        kind = self.type.removeprefix(TYPE_PREFIX)
        return f"outpost.{kind}.{self.subject or '_'}"


class SinkError(Exception):
    """The bus cannot take events now (down, refused, timed out); the message says why.
    The drain retries the same events with back-off. `permanent` marks a configuration
    the sink will never get past (bad credentials, a stream it may not create): the sink
    is shown as failed with the message, and retried at the slowest pace."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class EventRefusedError(Exception):
    """The bus refused one event for good (a webhook's 4xx other than 408 and 429; an
    event larger than a NATS server or stream, or a RabbitMQ node, takes): the drain
    moves it to the dead-letter table and goes on with the next."""

    def __init__(self, event: Event, reason: str) -> None:
        super().__init__(reason)
        self.event = event
        self.reason = reason


class Sink(Protocol):
    """One configured sink's connection."""

    name: str

    async def start(self) -> None:
        """Connect (and create the stream or exchange if missing); SinkError if not."""
        ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish in order; return once the bus acknowledged every one. SinkError when
        it cannot (none may be assumed delivered: the drain sends them all again);
        EventRefusedError for one it refuses for good (those before it were delivered)."""
        ...

    async def close(self) -> None:
        """Disconnect; safe to call twice and after a failed start."""
        ...
