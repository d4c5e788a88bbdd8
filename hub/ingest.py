"""Validate every message a device sends and apply it to the registry, in batches.

A payload that breaks the wire contract is logged with its reason, counted and dropped.
Valid messages of one batch are applied in one store call (a thread hop costs more than
the SQL); if that call fails, each message is retried on its own so that one bad
message cannot sink its neighbours. Nothing a device sends stops the next message.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from hub.store import ConnectionLost, HeartbeatSeen, HelloSeen, HubStore, PresenceEvent
from outpost import wire

logger = logging.getLogger(__name__)


class Ingest:
    """Routes `up` messages from devices to the registry."""

    def __init__(
        self,
        store: HubStore,
        *,
        max_payload_bytes: int,
        outcomes: collections.Counter[tuple[str, str]] | None = None,
        observe_batch: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._store = store
        self._max_payload_bytes = max_payload_bytes
        self._observe_batch = observe_batch
        # Counts by (kind, outcome), exported as a Prometheus counter. Kinds outside the
        # wire contract count as "other", so a device cannot mint new series.
        self.outcomes = outcomes if outcomes is not None else collections.Counter()

    async def handle(self, topic: str, payload: bytes) -> None:
        """Validate and apply one message; never raises."""
        await self.handle_batch([(topic, payload)])

    async def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Validate and apply messages in arrival order; never raises."""
        started = time.perf_counter()
        try:
            await self._handle_batch(messages)
        finally:
            self._observe_batch(time.perf_counter() - started)

    async def _handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        now = time.time()
        events: list[tuple[str, PresenceEvent | None]] = []
        for topic, payload in messages:
            envelope, device_id = self._validate(topic, payload)
            if envelope is not None:
                events.append((envelope.kind, _event(device_id, envelope, now)))
        presence = [(kind, event) for kind, event in events if event is not None]
        for kind, event in events:
            if event is None:  # nothing to store (an "online" status: hello says it all)
                self.outcomes[(kind, "accepted")] += 1
        if not presence:
            return
        try:
            changed = await self._store.record_presence([e for _, e in presence])
        except Exception:
            logger.exception(
                "storing a batch of %d messages failed; retrying one by one", len(presence)
            )
            await self._one_by_one(presence)
            return
        for (kind, event), flipped in zip(presence, changed, strict=True):
            self._accepted(kind, event, flipped)

    async def _one_by_one(self, presence: list[tuple[str, PresenceEvent]]) -> None:
        for kind, event in presence:
            try:
                (flipped,) = await self._store.record_presence([event])
            except Exception:
                self.outcomes[(kind, "error")] += 1
                logger.exception("storing %s from %s failed", kind, event.device_id)
                continue
            self._accepted(kind, event, flipped)

    def _validate(self, topic: str, payload: bytes) -> tuple[wire.Envelope | None, str]:
        kind = "?"
        try:
            device_id, direction, kind = wire.parse_topic(topic)
            if direction != "up":
                raise wire.WireError("topic", f"hub received a down topic: {topic!r}")
            if kind not in wire.UP_KINDS:  # refuse before spending time on the payload
                raise wire.WireError("kind", f"unknown message kind {kind!r} in topic")
            envelope = wire.decode(
                payload,
                kinds=wire.UP_KINDS,
                expected_kind=kind,
                max_bytes=self._max_payload_bytes,
            )
        except wire.WireError as exc:
            label = kind if kind in wire.UP_KINDS else "other"
            self.outcomes[(label, f"rejected:{exc.reason}")] += 1
            logger.warning("rejected message on %s: %s: %s", topic, exc.reason, exc)
            return None, ""
        return envelope, device_id

    def _accepted(self, kind: str, event: PresenceEvent, flipped: bool) -> None:
        self.outcomes[(kind, "accepted")] += 1
        if not flipped:
            return
        if isinstance(event, ConnectionLost):
            logger.info("%s offline (connection lost)", event.device_id)
        else:
            logger.info("%s online", event.device_id)


def _event(device_id: str, envelope: wire.Envelope, now: float) -> PresenceEvent | None:
    body = envelope.body
    if isinstance(body, wire.Hello):
        return HelloSeen(
            device_id=device_id,
            conn=body.conn,
            now=now,
            profile=body.profile,
            agent_version=body.agent_version,
            heartbeat_interval=body.heartbeat_interval,
            capabilities=dataclasses.asdict(body.capabilities),
        )
    if isinstance(body, wire.Heartbeat):
        return HeartbeatSeen(
            device_id=device_id,
            conn=body.conn,
            now=now,
            heartbeat_interval=body.heartbeat_interval,
            load=dataclasses.asdict(body.load),
        )
    if isinstance(body, wire.Status) and not body.online:
        return ConnectionLost(device_id=device_id, conn=body.conn, now=now)
    return None
