"""Device ids asked for by callers that must not wait (the ingest, API handlers), taken
in batches by one worker: asking again before the worker comes round costs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Wanted:
    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._wake = asyncio.Event()

    def add(self, device_ids: Iterable[str]) -> None:
        self._ids.update(device_ids)
        self._wake.set()

    async def take(self) -> list[str]:
        """Wait until some are asked for; return them all, in order, and forget them."""
        await self._wake.wait()
        self._wake.clear()
        ids, self._ids = sorted(self._ids), set()
        return ids
