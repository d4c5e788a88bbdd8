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

from edge.identity import DevicePaths
from edge.localhttp import OCTETS, Request, Response, Route, error, json_response, post
from edge.parts import AgentParts
from outpost.courier import MAX_HUB_BUNDLE_BYTES

if TYPE_CHECKING:
    from edge.courier import CourierDesk
    from outpost import wire

MAX_IMPORT_BYTES = MAX_HUB_BUNDLE_BYTES


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

    def routes(self) -> list[Route]:
        return courier_routes(self.desk)


def courier_routes(desk: Callable[[], CourierDesk]) -> list[Route]:
    """`desk` gives the desk when a request needs it."""

    async def export(request: Request) -> Response:
        from edge.courier import MAX_RECORDS
        from outpost.courier.sealing import BundleError

        limit = request.query.get("max_records", str(MAX_RECORDS))
        if not (limit.isascii() and limit.isdigit()) or int(limit) < 1:  # "²" is a digit
            return _refused(f"max_records must be a whole number from 1, got {limit!r}", 400)
        try:
            sealed, counts, more = await desk().export(int(limit))
        except BundleError as exc:
            return _refused(str(exc))
        headers = {"X-Outpost-Records": json.dumps(counts), "X-Outpost-More": str(more).lower()}
        return Response(sealed, content_type=OCTETS, headers=headers)

    async def import_(request: Request) -> Response:
        from outpost.courier.sealing import BundleError

        try:
            applied = await desk().import_(request.body)
        except BundleError as exc:
            return _refused(str(exc))
        return json_response(applied)

    return [
        post("/v1/bundles/export", export),
        # A bundle over this is refused by the server (413) before it is all held.
        post("/v1/bundles/import", import_, max_body=MAX_IMPORT_BYTES),
    ]


def _refused(message: str, status: int = 422) -> Response:
    return error(status, "bundle_refused", message)
