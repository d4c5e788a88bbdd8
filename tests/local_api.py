"""A client of an agent's local API over its Unix socket, for tests and benchmarks; and
the local API itself in the test's process (`local_api`), on a real store with the
shipped models on the real interpreter."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from edge.inference.directory import ModelDirectory
from edge.inference.service import InferenceService
from edge.localapi import LocalApi
from edge.store import AgentStore, Bounds
from outpost import wire
from tests.support import SHIPPED_MODELS


@dataclass(frozen=True)
class Served:
    """A local API in this process: its socket, inference service and store."""

    socket: Path
    service: InferenceService
    store: AgentStore


@contextlib.asynccontextmanager
async def local_api(
    folder: Path, max_body_bytes: int = 4 << 20, **service: Any
) -> AsyncIterator[Served]:
    """The local API on `folder`/api.sock, with the shipped models installed and loaded
    (`service`: InferenceService's keyword arguments)."""
    store = AgentStore(folder / "store.db", {s: Bounds(0, 0, 0) for s in wire.STREAMS})
    await store.start()
    directory = ModelDirectory(folder / "models")
    for model in SHIPPED_MODELS:
        directory.install(model)
    inference = InferenceService(directory, store, **service)

    async def status() -> dict[str, Any]:
        return {}

    api = LocalApi(store, inference, status, max_body_bytes)
    try:
        await inference.start()
        await api.start(folder / "api.sock")
        yield Served(folder / "api.sock", inference, store)
    finally:
        await api.stop()
        await inference.close()
        await store.close()


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
