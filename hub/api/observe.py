"""Observability routes: Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hub.api.context import ApiContext
from hub.api.drift import fleet_drift
from hub.api.routing import Route
from hub.metrics import CONTENT_TYPE


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
            "/api/v1/openapi.json",
            "viewer",
            openapi,
            "This API's OpenAPI document",
            "observability",
        ),
    ]
