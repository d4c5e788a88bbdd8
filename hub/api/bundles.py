"""Courier bundle route: `POST /api/v1/bundles` imports one device bundle (its part
files' bytes, one after another) and answers with what it stored and the device's ack
bundle, as one part file's bytes in base64 (hub/courier/importer.py)."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError
from hub.api.routing import AUDIT_DETAIL, Route
from hub.courier.desk import CourierDesk
from outpost.courier import parts
from outpost.courier.sealing import BundleError
from outpost.schema import Struct

MAX_BUNDLE_BYTES = 1 << 30
BUSY_RETRY_S = 10  # what a courier's client is told to wait while another import runs
OCTETS = "application/octet-stream"


class ImportedOut(Struct, frozen=True):
    """What one device bundle brought, and the answer to carry back."""

    device_id: Annotated[str, Meta(description="the device that made it")]
    bundle_id: Annotated[str, Meta(description="its id (imported once: a replay is refused)")]
    created_at: Annotated[float, Meta(description="when the device made it, epoch seconds")]
    stored: Annotated[dict[str, int], Meta(description="new records, by stream")]
    repeated: Annotated[int, Meta(description="records the hub held already")]
    not_taken: Annotated[
        list[str],
        Meta(description="streams numbered before the device knew the hub's marks"),
    ]
    task_results: Annotated[dict[str, int], Meta(description="task results, by outcome")]
    tasks_leased: Annotated[
        int, Meta(description="queued tasks leased to the device in the ack (for 7 days)")
    ]
    ack_name: Annotated[str, Meta(description="a file name for the ack bundle")]
    ack: Annotated[
        str,
        Meta(
            description="the device's ack bundle (its marks and policy) as one part file, "
            "base64: write it to ack_name and carry it to the device"
        ),
    ]
    history: Annotated[
        str,
        Meta(
            description="what the device went through since the hub's last ack: the period "
            "its records cover, load samples (CPU min-max, mean) and restarts"
        ),
    ] = ""
    ack_problem: Annotated[
        str, Meta(description="why there is no ack (empty ack); the records are stored")
    ] = ""


def routes(ctx: ApiContext) -> list[Route]:
    # One import at a time, from reading the upload on: each holds up to 1 GiB and
    # decrypts and decompresses it before its signature can be checked (the bundle key
    # is public), so several at once would take the hub's memory. Bundles are rare (a
    # courier's visit): the next is refused with Retry-After rather than queued, since
    # waiting uploads would be held in memory too.
    importing = asyncio.Lock()

    async def import_bundle(request: web.Request) -> web.Response:
        if request.content_type != OCTETS:
            raise ApiError(415, "unsupported_media_type", f"send the part files as {OCTETS}")
        desk = ctx.courier
        if isinstance(desk, BundleError):
            raise ApiError(503, "unavailable", str(desk))
        if importing.locked():
            raise ApiError(
                503,
                "busy",
                "another bundle is being imported: this hub imports one at a time; send "
                f"this one again in {BUSY_RETRY_S} s",
                headers={"Retry-After": str(BUSY_RETRY_S)},
            )
        async with importing:
            return await _import(request, desk)

    async def _import(request: web.Request, desk: CourierDesk) -> web.Response:
        blob = await _read(request)
        try:
            found = await asyncio.to_thread(parts.parts_of, blob, "the upload")  # checksums
            (name, sealed), *more = await asyncio.to_thread(parts.join, found)
            if more:
                raise BundleError("the upload holds more than one bundle: send one at a time")
            outcome = await desk.importer.import_bundle(sealed)
        except BundleError as exc:
            raise ApiError(422, "bundle_refused", str(exc)) from exc
        request[AUDIT_DETAIL] = {
            "device_id": outcome.device_id,
            "bundle_id": outcome.bundle_id,
            "stored": sum(outcome.stored.values()),
        }
        out = ImportedOut(
            device_id=outcome.device_id,
            bundle_id=outcome.bundle_id,
            created_at=outcome.created_at,
            stored=dict(outcome.stored),
            repeated=outcome.repeated,
            not_taken=outcome.waiting,
            task_results=dict(outcome.task_results),
            tasks_leased=outcome.tasks_leased,
            ack_name=f"outpost-hub-for-{outcome.device_id}-{outcome.bundle_id[:12]}.001-of-001.opb",
            ack=base64.b64encode(parts.as_part(outcome.ack, name)).decode() if outcome.ack else "",
            ack_problem=outcome.ack_problem,
            history=outcome.history,
        )
        return params.answer(out)

    return [
        Route(
            "POST",
            "/api/v1/bundles",
            "courier",
            import_bundle,
            "Import a device's courier bundle (its .opb part files, concatenated); answers "
            "with the ack bundle to carry back",
            "fleet",
            action="bundle.import",
            response=ImportedOut,
            raw_body=OCTETS,
            errors=(422, 503),
        )
    ]


async def _read(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BUNDLE_BYTES:
        raise ApiError(413, "too_large", f"a bundle upload is at most {MAX_BUNDLE_BYTES:,} bytes")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > MAX_BUNDLE_BYTES:
            raise ApiError(
                413, "too_large", f"a bundle upload is at most {MAX_BUNDLE_BYTES:,} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)
