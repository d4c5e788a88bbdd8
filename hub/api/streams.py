"""Upload stream routes: page through the records a device sent, and count them."""

from __future__ import annotations

from aiohttp import web

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.models import RecordOut, StreamOut, StreamsOut
from hub.api.routing import Param, Route
from hub.store import MAX_SEQ
from outpost import schema, wire


def routes(ctx: ApiContext) -> list[Route]:
    async def known_device(request: web.Request) -> str:
        device_id = request.match_info["id"]
        if await ctx.store.device(device_id) is None:
            raise ApiError(404, "not_found", f"no device {device_id!r}")
        return device_id

    async def list_records(request: web.Request) -> web.Response:
        stream = _stream(request)
        size = params.limit(request)
        after = _after(request)
        device_id = await known_device(request)
        found = await ctx.store.records(device_id, stream, after=after, limit=size + 1)
        page = params.page(found, size, lambda r: schema.dump(RecordOut.of(r)), lambda r: r.seq)
        return web.json_response(page)

    async def list_streams(request: web.Request) -> web.Response:
        device_id = await known_device(request)
        held = {c.stream: c for c in await ctx.store.stream_counts(device_id)}
        out = StreamsOut(device_id, [StreamOut.of(s, held.get(s)) for s in wire.STREAMS])
        return web.json_response(schema.dump(out))

    device_id = Param("id", "path", "device id")
    return [
        Route(
            "GET",
            "/api/v1/devices/{id}/records",
            "viewer",
            list_records,
            "Page through the records a device uploaded, in sequence order",
            "streams",
            response=RecordOut,
            paginated=True,
            params=(
                device_id,
                Param("stream", "query", "results, events or metrics (required)"),
                Param("after", "query", "only records with a higher seq (default 0)", "integer"),
            ),
            errors=(404,),
        ),
        Route(
            "GET",
            "/api/v1/devices/{id}/streams",
            "viewer",
            list_streams,
            "Records held and high-water mark of each upload stream of a device",
            "streams",
            response=StreamsOut,
            params=(device_id,),
            errors=(404,),
        ),
    ]


def _stream(request: web.Request) -> wire.Stream:
    text = request.query.get("stream")
    for stream in wire.STREAMS:
        if text == stream:
            return stream
    raise bad_field(
        "query.stream",
        f"stream must be one of {', '.join(wire.STREAMS)}, got {text!r}"
        if text is not None
        else f"stream is required: one of {', '.join(wire.STREAMS)}",
    )


def _after(request: web.Request) -> int:
    """Where the page starts: the opaque `cursor` of the previous page, else `after`."""
    cursor = params.decode_cursor(request, int)
    if cursor is not None:
        if not 0 <= cursor <= MAX_SEQ:
            raise bad_field("query.cursor", "cursor is not one this API returned")
        return int(cursor)
    text = request.query.get("after", "0")
    # isascii: str.isdigit also accepts digits int() refuses ("²"); 19 digits fit int64.
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_SEQ):
        raise bad_field("query.after", f"after must be an integer from 0 to {MAX_SEQ}")
    return int(text)
