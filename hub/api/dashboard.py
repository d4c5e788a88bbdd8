"""The fleet dashboard: a static page (public: it holds no data) and the live stream it
reads, one JSON snapshot of the fleet per tick (viewer role, like every read route).

The stream is Server-Sent Events over a plain GET, so the page can send its token in the
Authorization header (it reads with fetch(); EventSource cannot send headers, and a
token in the URL would end up in logs). Without `Accept: text/event-stream` the route
answers one snapshot as JSON, for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from hub.api.context import ApiContext
from hub.api.errors import ApiError
from hub.api.live import FeedClosedError, FeedFullError, LiveFeed
from hub.api.models import DeviceOut
from hub.api.rollouts import RolloutOut
from hub.api.routing import PRINCIPAL, Param, Route
from hub.monitoring.metrics import TASK_STATES
from hub.store import Device
from hub.store.overview import Overview
from outpost import schema

logger = logging.getLogger(__name__)

# Ticks: a second keeps "offline" on screen within a heartbeat or two of the hub deciding
# it, at one store read per second however many pages are open.
TICK_S = 1.0
MAX_STREAMS = 32  # open streams per hub replica; more are told to retry
# A stream ends after this long (or when its token expires) and the page reconnects: the
# guard then checks the token again, so a revoked token stops seeing data within it.
STREAM_MAX_S = 60.0
# Bounds of one snapshot: a page shows at most this many devices and roll-outs.
MAX_DEVICES = 500
MAX_ROLLOUTS = 5
MAX_EVENTS = 20_000  # task transitions read per tick; the rest are read on the next
# A gap longer than this between snapshots (nobody listened): start counting afresh
# rather than report everything since as one tick.
STALE_S = 10 * TICK_S

# The page's script: JavaScript modules that import each other by these names (no
# build step bundles them).
SCRIPTS = (
    "dashboard.js",
    "actions.js",
    "audit.js",
    "charts.js",
    "device.js",
    "devices.js",
    "drift.js",
    "explain.js",
    "fleet.js",
    "rollouts.js",
    "sinks.js",
    "stream.js",
    "tasks.js",
    "util.js",
)
# The page's files, by the name in its URL: (file in hub/dashboard, content type).
ASSETS = {
    **{name: (name, "text/javascript; charset=utf-8") for name in SCRIPTS},
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "uPlot.LICENSE": ("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
}
PAGE = ("index.html", "text/html; charset=utf-8")
# Everything the page loads comes from this hub: no inline script, no third party.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class Snapshots:
    """Builds the snapshot the stream sends: the store's overview, as JSON."""

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._cursor: int | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()  # the cursor moves once per build

    async def __call__(self) -> bytes:
        async with self._lock:
            now = time.time()
            stale = now - self._at > STALE_S
            found = await self._ctx.store.overview(
                after=None if stale else self._cursor,
                max_devices=MAX_DEVICES,
                max_rollouts=MAX_ROLLOUTS,
                max_events=MAX_EVENTS,
            )
            # Online, offline and revoked from one read, so the tiles add up: the
            # overview's count of devices includes revoked ones with the offline.
            states = await self._ctx.store.state_counts()
            window = 0.0 if stale else now - self._at
            self._cursor, self._at = found.cursor, now
        # msgspec, as every API answer: a figure no JSON can hold (a shadow's latency
        # ratio over a live sum of 0.001 ms is infinite) is null, where json.dumps wrote
        # `Infinity`, and the page's JSON.parse failed on every frame after.
        return msgspec.json.encode(_snapshot(found, states, now, window))


def routes(ctx: ApiContext, feed: LiveFeed) -> list[Route]:
    async def page(request: web.Request) -> web.Response:
        return await _file(*PAGE, {**COMMON_HEADERS, **PAGE_HEADERS})

    async def asset(request: web.Request) -> web.Response:
        found = ASSETS.get(request.match_info["name"])
        if found is None:
            raise ApiError(404, "not_found", f"no file {request.match_info['name']!r}")
        return await _file(*found, COMMON_HEADERS)

    async def stream(request: web.Request) -> web.StreamResponse:
        if "text/event-stream" not in request.headers.get("Accept", ""):
            return web.Response(
                body=await feed.snapshot(),
                headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
            )
        try:
            principal = request[PRINCIPAL]
            privileged = principal.may("operator")
            async with feed.listen(principal.subject, privileged=privileged) as listener:

                async def still_active() -> bool:
                    return await ctx.tokens.state(principal.jti) == "active"

                return await _send(request, listener.next, principal.expires_at, still_active)
        except FeedFullError as exc:
            raise ApiError(
                429, "rate_limited", f"{exc}; retry in 5 s", headers={"Retry-After": "5"}
            ) from exc
        except FeedClosedError as exc:
            raise ApiError(503, "unavailable", "the hub is stopping") from exc

    return [
        Route(
            "GET",
            "/dashboard",
            "public",
            page,
            "The fleet dashboard page (it asks for a token; the data needs the viewer role)",
            "dashboard",
            content_type="text/html",
        ),
        Route(
            "GET",
            "/dashboard/{name}",
            "public",
            asset,
            "A file of the dashboard page: its script and style, and the chart library "
            "(uPlot) with its licence",
            "dashboard",
            content_type="text/plain",
            params=(Param("name", "path", "file name, e.g. dashboard.js"),),
            errors=(404,),
        ),
        Route(
            "GET",
            "/api/v1/stream",
            "viewer",
            stream,
            "Live fleet snapshots as Server-Sent Events (`event: snapshot`, JSON data) every "
            f"{TICK_S:g} s, with `Accept: text/event-stream`; otherwise one snapshot as JSON",
            "dashboard",
            content_type="text/event-stream",
        ),
    ]


async def _send(
    request: web.Request,
    next_frame: Any,
    token_expires_at: float,
    still_active: Callable[[], Awaitable[bool]],
) -> web.StreamResponse:
    """Write snapshots until the client leaves, the feed closes, the token expires or is
    revoked (looked at before every snapshot: from memory, see tokenstates.py), or
    `STREAM_MAX_S` passes."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold frames back
        }
    )
    await response.prepare(request)
    remaining = min(STREAM_MAX_S, token_expires_at - time.time())
    try:
        async with asyncio.timeout(max(remaining, 0)):
            while (frame := await next_frame()) is not None and await still_active():
                await response.write(b"event: snapshot\ndata: " + frame + b"\n\n")
    except TimeoutError:
        pass  # the page reconnects and shows its token again to the guard
    except ConnectionResetError:
        return response  # the client left
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _file(name: str, content_type: str, headers: dict[str, str]) -> web.Response:
    body = await asyncio.to_thread(_read, name)  # file I/O: off the event loop
    return web.Response(body=body, headers={"Content-Type": content_type, **headers})


_CACHE: dict[str, bytes] = {}


def _read(name: str) -> bytes:
    """A file of the package's `dashboard` folder, read once."""
    body = _CACHE.get(name)
    if body is None:
        body = resources.files("hub").joinpath("dashboard", name).read_bytes()
        _CACHE[name] = body
    return body


def _snapshot(found: Overview, states: dict[str, int], now: float, window: float) -> dict[str, Any]:
    return {
        "at": now,
        "interval_s": TICK_S,
        "fleet": {
            "total": found.devices_total,  # every device in the registry, as listed
            "online": states["online"],
            "offline": states["offline"],  # enrolled, not revoked, not connected
            "revoked": states["revoked"],  # never counted offline: they cannot come back
            "shown": len(found.devices),
        },
        "devices": [_device(d, found) for d in found.devices],
        "tasks": {
            "states": {state: found.task_states.get(state, 0) for state in TASK_STATES},
            "window_s": round(window, 3),
            "finished": [
                {
                    "model": f.model,
                    "states": f.states,
                    "latency_ms": f.latency_ms_sum / f.latency_count if f.latency_count else None,
                }
                for f in found.finished
            ],
        },
        "rollouts": [
            schema.dump(RolloutOut.of(r, found.shadows.get(r.id))) for r in found.rollouts
        ],
    }


def _device(d: Device, found: Overview) -> dict[str, Any]:
    policy = found.policy.get(d.device_id)
    return {
        **schema.dump(DeviceOut.of(d)),
        "policy": None if policy is None else dataclasses.asdict(policy),
    }
