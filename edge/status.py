"""What a running agent says of itself on the device: the local API's `/v1/status`, and
the line `systemctl status` shows."""

from __future__ import annotations

import time
from typing import Any

from edge.parts import AgentParts
from edge.refusal import Refusals
from edge.store import StoreReadError
from outpost import __version__, schema
from outpost.mqtt import LinkState


class Status:
    """The running agent's state, as the device's own programs and systemd see it."""

    def __init__(
        self,
        device_id: str,
        link: LinkState,
        refusals: Refusals,
        parts: AgentParts,
        *,
        started: float,
    ) -> None:
        self._device_id = device_id
        self._link = link
        self._refusals = refusals
        self._parts = parts
        self._started = started

    async def report(self) -> dict[str, Any]:
        """Return what the local API's /v1/status shows."""
        parts = self._parts
        current = parts.policy.current
        encoder = parts.uploader.encoder
        return {
            "device_id": self._device_id,
            "version": __version__,  # the agent's: after an update, which one runs
            "connection": self._link.state,
            "link": self._refusals.report(),
            "uptime_s": time.monotonic() - self._started,
            # None: no policy yet, the agent runs on its settings file
            "policy_version": current.version if current else None,
            "runtime": parts.inference.runtime_label,
            "models": {m.name: m.state for m in parts.inference.inventory()},
            "tasks": {**schema.dump(parts.tasks.load()), "done": parts.tasks.done},
            "store": await self._store_stats(),
            "sync": {
                "bytes_sent": encoder.bytes_sent,
                # the same batches plain (msgpack): bytes_sent / plain_bytes is what
                # compression saved on the link
                "plain_bytes": encoder.plain_bytes,
                "records_sent": encoder.records_sent,
                # the batch encoding the hub accepted on this connection (None: plain)
                "compression": encoder.encoding,
                "packed_batches": encoder.packed_batches,
                # how many plain bytes the next batch may take: grows while the link
                # acknowledges quickly, up to the batch_bytes setting (edge/batchsize.py)
                "batch_bytes": parts.uploader.budget.bytes,
            },
        }

    async def line(self) -> str:
        """Return one line for `systemctl status`: the link's state and how full the store is."""
        streams = (await self._store_stats()).get("streams", {})
        fill = ", ".join(
            f"{name} {s['fill']:.0%} ({s['records']})" for name, s in sorted(streams.items())
        )
        return f"broker link {self._refusals.summary()}; store {fill or 'empty'}"

    async def _store_stats(self) -> dict[str, Any]:
        """Return the store's stats, or the reason it could not be read (a failing disk)."""
        try:
            return await self._parts.store.stats()
        except StoreReadError as exc:
            return {"error": exc.reason}
