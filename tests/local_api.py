"""A client of an agent's local API over its Unix socket, for tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import msgpack


class LocalClient:
    """Posts records, asks for inferences and reads status, as a program on the device would."""

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

    async def infer(self, model: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self._session.post(f"http://agent/v1/infer/{model}", json=body) as response:
            return response.status, await response.json()

    async def infer_msgpack(self, model: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Send and receive msgpack (errors come back as JSON)."""
        async with self._session.post(
            f"http://agent/v1/infer/{model}",
            data=msgpack.packb(body),
            headers={"Content-Type": "application/msgpack"},
        ) as response:
            raw = await response.read()
            if response.content_type == "application/msgpack":
                return response.status, msgpack.unpackb(raw)
            return response.status, json.loads(raw)

    async def post_raw(self, path: str, data: bytes, content_type: str) -> tuple[int, Any]:
        async with self._session.post(
            f"http://agent{path}", data=data, headers={"Content-Type": content_type}
        ) as response:
            return response.status, await response.json()

    async def models(self) -> dict[str, Any]:
        async with self._session.get("http://agent/v1/models") as response:
            body: dict[str, Any] = await response.json()
            return body
