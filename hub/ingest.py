"""Validate every message a device sends and hand it to the handler for its kind.

A payload that breaks the wire contract is logged with its reason and dropped; a handler
that fails is logged too. Nothing a device sends can stop the dispatch of the next one.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from hub.store import HubStore
from outpost import wire

logger = logging.getLogger(__name__)

Handler = Callable[[str, wire.Envelope], Awaitable[None]]


class Ingest:
    """Routes `up` messages from devices to the registry."""

    def __init__(self, store: HubStore, *, max_payload_bytes: int) -> None:
        self._store = store
        self._max_payload_bytes = max_payload_bytes
        self._handlers: dict[str, Handler] = {
            "hello": self._on_hello,
            "heartbeat": self._on_heartbeat,
            "status": self._on_status,
        }
        # Outcome counts by (kind, outcome); the web endpoint exports them later.
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on_accepted: Callable[[str, wire.Envelope], None] | None = None

    async def handle(self, topic: str, payload: bytes) -> None:
        """Validate and dispatch one message; never raises."""
        kind = "?"
        try:
            device_id, direction, kind = wire.parse_topic(topic)
            if direction != "up":
                raise wire.WireError("topic", f"hub received a down topic: {topic!r}")
            envelope = wire.decode(
                payload,
                kinds=wire.UP_KINDS,
                expected_kind=kind,
                max_bytes=self._max_payload_bytes,
            )
        except wire.WireError as exc:
            self.outcomes[(kind, f"rejected:{exc.reason}")] += 1
            logger.warning("rejected message on %s: %s: %s", topic, exc.reason, exc)
            return
        try:
            await self._handlers[kind](device_id, envelope)
        except Exception:
            self.outcomes[(kind, "error")] += 1
            logger.exception("handler for %s from %s failed", kind, device_id)
            return
        self.outcomes[(kind, "accepted")] += 1
        if self.on_accepted is not None:
            self.on_accepted(device_id, envelope)

    async def _on_hello(self, device_id: str, envelope: wire.Envelope) -> None:
        hello: wire.Hello = envelope.body
        await self._store.record_hello(
            device_id,
            conn=hello.conn,
            now=time.time(),
            profile=hello.profile,
            agent_version=hello.agent_version,
            heartbeat_interval=hello.heartbeat_interval,
            capabilities=dataclasses.asdict(hello.capabilities),
        )
        logger.info(
            "%s online (profile %s, agent %s)", device_id, hello.profile, hello.agent_version
        )

    async def _on_heartbeat(self, device_id: str, envelope: wire.Envelope) -> None:
        beat: wire.Heartbeat = envelope.body
        await self._store.record_heartbeat(
            device_id,
            conn=beat.conn,
            now=time.time(),
            heartbeat_interval=beat.heartbeat_interval,
            load=dataclasses.asdict(beat.load),
        )

    async def _on_status(self, device_id: str, envelope: wire.Envelope) -> None:
        status: wire.Status = envelope.body
        if status.online:
            return  # `hello` carries everything an online status would
        if await self._store.record_offline(device_id, conn=status.conn, now=time.time()):
            logger.info("%s offline (connection lost)", device_id)
