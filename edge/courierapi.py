"""The local API's courier routes (edge/courier.py), which `outpost-agent bundle` calls:

- `POST /v1/bundles/export[?max_records=N]` answers with the sealed bundle
  (application/octet-stream); the header `X-Outpost-Records` holds its records per
  stream (JSON), and `X-Outpost-More` whether records were left out over N.
- `POST /v1/bundles/import` takes a hub bundle's bytes and answers with what it applied
  (JSON), or 422 with the reason it was refused.
"""

from __future__ import annotations

import json

from aiohttp import web

from edge.courier import MAX_RECORDS, CourierDesk
from outpost.courier.sealing import BundleError

MAX_IMPORT_BYTES = 256 << 20
OCTETS = "application/octet-stream"


def courier_routes(desk: CourierDesk) -> list[web.RouteDef]:
    async def export(request: web.Request) -> web.Response:
        limit = request.query.get("max_records", str(MAX_RECORDS))
        if not limit.isdigit() or int(limit) < 1:
            return _refused(f"max_records must be a whole number from 1, got {limit!r}", 400)
        try:
            sealed, counts, more = await desk.export(int(limit))
        except BundleError as exc:
            return _refused(str(exc))
        headers = {"X-Outpost-Records": json.dumps(counts), "X-Outpost-More": str(more).lower()}
        return web.Response(body=sealed, content_type=OCTETS, headers=headers)

    async def import_(request: web.Request) -> web.Response:
        chunks = []
        size = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > MAX_IMPORT_BYTES:
                return _refused(f"a bundle is at most {MAX_IMPORT_BYTES:,} bytes", status=413)
            chunks.append(chunk)
        try:
            applied = await desk.import_(b"".join(chunks))
        except BundleError as exc:
            return _refused(str(exc))
        return web.json_response(applied)

    return [web.post("/v1/bundles/export", export), web.post("/v1/bundles/import", import_)]


def _refused(message: str, status: int = 422) -> web.Response:
    return web.json_response(
        {"error": {"code": "bundle_refused", "message": message}}, status=status
    )
