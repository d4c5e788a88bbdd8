"""Upload stream routes: page through the records a device sent, and count them."""

from __future__ import annotations

import base64
import math
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from hub.api import devicerefs, params
from hub.api.context import ApiContext
from hub.api.errors import bad_field
from hub.api.routing import Param, Route
from hub.store import MAX_SEQ, StoredRecord, StreamCount
from outpost import wire
from outpost.schema import Struct


class RecordOut(Struct, frozen=True):
    """One record a device uploaded, as the hub holds it."""

    seq: Annotated[int, Meta(description="its sequence number in the device's stream")]
    ts: Annotated[float, Meta(description="when the device wrote it, epoch seconds")]
    body: Annotated[Any, Meta(description="the record (binary values as base64 text)")]
    received_at: Annotated[float, Meta(description="when the hub stored it, epoch seconds")]

    @classmethod
    def of(cls, r: StoredRecord) -> RecordOut:
        return cls(r.seq, r.ts, _jsonable(r.body), r.received_at)

    @classmethod
    def without_input(cls, r: StoredRecord) -> RecordOut:
        """The record with a carried input's bytes left out: `input.bytes` says how many
        (a list shows which results can be explained without sending their images)."""
        body = r.body
        carried = body.get("input") if isinstance(body, dict) else None
        if isinstance(carried, dict) and isinstance(carried.get("data"), bytes):
            rest = {k: v for k, v in carried.items() if k != "data"}
            body = {**body, "input": {**rest, "bytes": len(carried["data"])}}
        return cls(r.seq, r.ts, _jsonable(body), r.received_at)


class StreamOut(Struct, frozen=True):
    """How much of one upload stream the hub holds for a device."""

    stream: Annotated[wire.Stream, Meta(description="results, events or metrics")]
    records: Annotated[int, Meta(description="records held")]
    hwm: Annotated[int, Meta(description="high-water mark: every number up to it was received")]

    @classmethod
    def of(cls, stream: wire.Stream, count: StreamCount | None) -> StreamOut:
        return cls(stream, count.records if count else 0, count.hwm if count else 0)


class StreamsOut(Struct, frozen=True):
    """Every upload stream of a device, in drain order."""

    device_id: Annotated[str, Meta(description="device id")]
    items: Annotated[list[StreamOut], Meta(description="results, events and metrics")]


def _jsonable(value: Any) -> Any:
    """Make a msgpack value JSON-safe: bytes (values or keys) become base64 text."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)  # a msgpack extension type: shown, not interpreted


def routes(ctx: ApiContext) -> list[Route]:
    async def known_device(request: web.Request) -> str:
        return await devicerefs.device_id(request, ctx.store)

    async def list_records(request: web.Request) -> web.Response:
        stream = _stream(request)
        size = params.limit(request)
        after = _after(request)
        device_id = await known_device(request)
        inputs = params.boolean(request, "inputs")
        found = await ctx.store.records(device_id, stream, after=after, limit=size + 1)
        shown = RecordOut.without_input if inputs is False else RecordOut.of
        page = params.page(found, size, shown, lambda r: r.seq)
        return params.answer(page)

    async def list_streams(request: web.Request) -> web.Response:
        device_id = await known_device(request)
        held = {c.stream: c for c in await ctx.store.stream_counts(device_id)}
        out = StreamsOut(device_id, [StreamOut.of(s, held.get(s)) for s in wire.STREAMS])
        return params.answer(out)

    device_id = devicerefs.DEVICE_PARAM
    return [
        Route(
            "GET",
            "/api/v1/devices/{id}/records",
            "viewer",
            list_records,
            "Page through the records a device uploaded, in sequence order",
            "streams",
            response=params.Page[RecordOut],
            params=(
                device_id,
                Param("stream", "query", "results, events or metrics (required)"),
                Param("after", "query", "only records with a higher seq (default 0)", "integer"),
                Param(
                    "inputs",
                    "query",
                    "false: a result's carried input without its bytes (input.bytes counts "
                    "them); default true",
                    "boolean",
                ),
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
