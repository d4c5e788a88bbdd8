"""Publishing policy: sign each device's effective policy and send it retained on its
`down/policy` topic, so the device gets it the moment it connects, however long it was
away. A policy that could not be sent stays marked unpublished and goes out again at
the next refresh (every hello refreshes that device)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.store import HubStore
from hub.wanted import Wanted
from outpost import policy, wire

logger = logging.getLogger(__name__)

PublishRetained = Callable[[str, bytes], Awaitable[None]]


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
        sent = 0
        for item in await self._store.refresh_policies(device_ids, now=now):
            signed = policy.sign(self._key, item.device_id, item.version, now, item.document)
            payload = wire.encode(
                "policy", wire.SignedPolicy(document=signed.document, signature=signed.signature)
            )
            try:
                await self._publish(wire.down_topic(item.device_id, "policy"), payload)
            except Exception as exc:  # stays unpublished; the next refresh sends it
                logger.warning("policy %d for %s not sent: %s", item.version, item.device_id, exc)
                continue
            await self._store.mark_policy_published(item.device_id, item.version)
            sent += 1
            logger.info("policy version %d published for %s", item.version, item.device_id)
        return sent
