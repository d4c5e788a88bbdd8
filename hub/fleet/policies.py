"""Publishing policy: sign each device's effective policy and send it retained on its
`down/policy` topic, so the device gets it the moment it connects, however long it was
away. A policy that could not be sent stays marked unpublished and goes out again at
the next refresh (every hello refreshes that device)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.fleet.wanted import Wanted
from hub.store import HubStore
from hub.store.policy import ToPublish
from outpost import policy, wire

logger = logging.getLogger(__name__)

PublishRetained = Callable[[str, bytes], Awaitable[None]]
SEND_AT_ONCE = 200  # policies in flight together: a fleet-wide change goes out in steps


class PolicyPublisher:
    def __init__(
        self, store: HubStore, key: ed25519.Ed25519PrivateKey, publish: PublishRetained
    ) -> None:
        self._store = store
        self._key = key
        self._publish = publish
        self._wanted = Wanted()

    def request(self, device_ids: list[str]) -> None:
        """Refresh these devices soon, from `run` (the ingest must not wait on a publish)."""
        self._wanted.add(device_ids)

    async def run(self) -> None:
        while True:
            wanted = await self._wanted.take()
            try:
                await self.refresh(wanted)
            except Exception:  # a locked database: the device's next hello asks again
                logger.exception("refreshing the policy of %d devices failed", len(wanted))

    async def refresh(self, device_ids: list[str] | None = None) -> int:
        """Recompute (all devices, or those named), sign and send what changed."""
        now = time.time()
        items = await self._store.refresh_policies(device_ids, now=now)
        sent: list[tuple[str, int]] = []
        for first in range(0, len(items), SEND_AT_ONCE):
            sent += await self._send_some(items[first : first + SEND_AT_ONCE], now)
        if len(sent) == 1:
            logger.info("policy version %d published for %s", sent[0][1], sent[0][0])
        elif sent:
            logger.info("policy published for %d devices", len(sent))
        return len(sent)

    async def _send_some(self, items: list[ToPublish], now: float) -> list[tuple[str, int]]:
        """Send these; return the (device, version)s that went out."""
        # In flight together, then one store call: one at a time, a ramp of new devices
        # waited a broker round trip and a store call per device for its policy.
        for item in items:
            if item.undeliverable:  # once, with its new version: hellos do not send it again
                logger.warning(
                    "policy %d for %s not sent: %s",
                    item.version,
                    item.device_id,
                    item.undeliverable,
                )
        items = [item for item in items if not item.undeliverable]
        results = await asyncio.gather(
            *(self._send(item, now) for item in items), return_exceptions=True
        )
        published = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, Exception):  # stays unpublished; the next refresh sends it
                logger.warning(
                    "policy %d for %s not sent: %s", item.version, item.device_id, result
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                published.append((item.device_id, item.version))
                logger.debug("policy version %d published for %s", item.version, item.device_id)
        if published and (behind := await self._store.mark_policy_published(published)):
            # Sent after a newer version of theirs: the broker keeps ours. Theirs again.
            logger.info("policy of %d devices sent again: a newer one went first", len(behind))
            self.request(behind)
        return published

    async def _send(self, item: ToPublish, now: float) -> None:
        signed = policy.sign(self._key, item.device_id, item.version, now, item.document)
        payload = wire.encode(
            "policy", wire.SignedPolicy(document=signed.document, signature=signed.signature)
        )
        await self._publish(wire.down_topic(item.device_id, "policy"), payload)
