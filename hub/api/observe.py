"""Observability routes: Prometheus metrics, devices over their message budget, and the
OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.routing import Route
from hub.models.driftwatch import fleet_drift
from hub.monitoring.metrics import CONTENT_TYPE
from hub.mqtt.intake import THROTTLED_FOR_S
from outpost.schema import Struct


class ThrottledOut(Struct, frozen=True):
    """A device whose messages went past its budget (`device_msgs_per_s` and the like)."""

    device_id: Annotated[str, Meta(description="device id")]
    dropped: Annotated[int, Meta(description="its messages dropped before decoding, since start")]
    last_drop_s_ago: Annotated[
        float | None,
        Meta(
            description="seconds since the last one was dropped (null: none since the hub started)"
        ),
    ]
    dropped_last_minute: Annotated[int, Meta(description="about how many in the last minute")]
    held_until: Annotated[
        float | None,
        Meta(
            description="held off for flooding until then (Unix time; its connections are "
            "refused): null when not held"
        ),
    ]


class ThrottledListOut(Struct, frozen=True):
    """Devices that went past their message budget recently, most dropped first."""

    window_s: Annotated[float, Meta(description="how long a device stays listed after a drop")]
    items: Annotated[list[ThrottledOut], Meta(description="the devices")]


def routes(ctx: ApiContext, document: Callable[[], dict[str, Any]]) -> list[Route]:
    async def metrics(request: web.Request) -> web.Response:
        now = time.time()
        body = ctx.metrics.exposition(
            await ctx.store.fleet_counts(),
            await ctx.store.task_counts(),
            await ctx.store.policy_drift(),
            gauges=await ctx.store.fleet_gauges(now=now),
            drift=await fleet_drift(ctx.store, now=now),
        )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def throttled(request: web.Request) -> web.Response:
        held = dict(ctx.holds.held)
        items = [
            ThrottledOut(
                t.device_id,
                t.dropped,
                round(t.seconds_ago, 3),
                t.recent,
                held.pop(t.device_id, None),
            )
            for t in ctx.intake.throttled()
        ]
        # Held since before the hub's start: no drops yet in this process.
        items += [ThrottledOut(d, 0, None, 0, until) for d, until in sorted(held.items())]
        return params.answer(ThrottledListOut(THROTTLED_FOR_S, items))

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document())

    return [
        Route(
            "GET",
            "/metrics",
            "viewer",
            metrics,
            "Prometheus metrics",
            "observability",
            content_type="text/plain",
        ),
        Route(
            "GET",
            "/api/v1/throttled",
            "viewer",
            throttled,
            "Devices whose MQTT messages went past their rate or byte budget recently, "
            "and those held off for it",
            "observability",
            response=ThrottledListOut,
        ),
        Route(
            "GET",
            "/api/v1/openapi.json",
            "viewer",
            openapi,
            "This API's OpenAPI document",
            "observability",
        ),
    ]
