"""The local API's courier routes (edge/courier.py), which `outpost-agent bundle` calls:

- `POST /v1/bundles/export[?max_records=N]` answers with the sealed bundle
  (application/octet-stream); the header `X-Outpost-Records` holds its records per
  stream (JSON), and `X-Outpost-More` whether records were left out over N.
- `POST /v1/bundles/import` takes a hub bundle's bytes and answers with what it applied
  (JSON), or 422 with the reason it was refused.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from edge.identity import DevicePaths
from edge.parts import AgentParts

if TYPE_CHECKING:
    from edge.courier import CourierDesk
    from outpost import wire

MAX_IMPORT_BYTES = 256 << 20
OCTETS = "application/octet-stream"


class CourierRoutes:
    """The routes, and the desk behind them made at the first bundle: bundles are rare (a
    site without a link, a technician's visit), and the desk's modules (sealing, key
    agreement, the keys' formats) would otherwise sit in the agent's memory for good."""

    def __init__(
        self, paths: DevicePaths, device_id: str, parts: AgentParts, task_slots: int = 0
    ) -> None:
        self._paths, self._device_id, self._parts = paths, device_id, parts
        self._task_slots = task_slots
        self._desk: CourierDesk | None = None
        # What a heartbeat would say (edge/telemetry.py), once the agent has made it.
        self.heartbeat: Callable[[str], Awaitable[wire.Heartbeat]] | None = None

    def desk(self) -> CourierDesk:
        from edge.courier import CourierDesk

        if self._desk is None:
            self._desk = CourierDesk(
                self._paths, self._device_id, self._parts, task_slots=self._task_slots
            )
        self._desk.heartbeat = self.heartbeat
        return self._desk

    def routes(self) -> list[web.RouteDef]:
        return courier_routes(self.desk)


def courier_routes(desk: Callable[[], CourierDesk]) -> list[web.RouteDef]:
    """`desk` gives the desk when a request needs it."""

    async def export(request: web.Request) -> web.Response:
        from edge.courier import MAX_RECORDS
        from outpost.courier.sealing import BundleError

        limit = request.query.get("max_records", str(MAX_RECORDS))
        if not limit.isdigit() or int(limit) < 1:
            return _refused(f"max_records must be a whole number from 1, got {limit!r}", 400)
        try:
            sealed, counts, more = await desk().export(int(limit))
        except BundleError as exc:
            return _refused(str(exc))
        headers = {"X-Outpost-Records": json.dumps(counts), "X-Outpost-More": str(more).lower()}
        return web.Response(body=sealed, content_type=OCTETS, headers=headers)

    async def import_(request: web.Request) -> web.Response:
        from outpost.courier.sealing import BundleError

        chunks = []
        size = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > MAX_IMPORT_BYTES:
                return _refused(f"a bundle is at most {MAX_IMPORT_BYTES:,} bytes", status=413)
            chunks.append(chunk)
        try:
            applied = await desk().import_(b"".join(chunks))
        except BundleError as exc:
            return _refused(str(exc))
        return web.json_response(applied)

    return [web.post("/v1/bundles/export", export), web.post("/v1/bundles/import", import_)]


def _refused(message: str, status: int = 422) -> web.Response:
    return web.json_response(
        {"error": {"code": "bundle_refused", "message": message}}, status=status
    )
