"""A client of an agent's local API over its Unix socket, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp


class LocalClient:
    """Posts records and reads status, as a program on the device would."""

    def __init__(self, socket: Path) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)))

    async def close(self) -> None:
        await self._session.close()

    async def append(self, stream: str, records: list[dict[str, Any]]) -> tuple[int, Any]:
        async with self._session.post(
            f"http://agent/v1/records/{stream}", json={"records": records}
        ) as response:
            return response.status, await response.json()

    async def status(self) -> dict[str, Any]:
        async with self._session.get("http://agent/v1/status") as response:
            body: dict[str, Any] = await response.json()
            return body
