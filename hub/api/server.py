"""Serve the route table over HTTPS (TLS 1.2+, loopback unless configured)."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from typing import Any

from aiohttp import web

from hub.access.ratelimit import RateLimiter
from hub.api import (
    admin,
    agentreleases,
    bundles,
    dashboard,
    drift,
    enroll,
    explain,
    fleet,
    observe,
    openapi,
    policy,
    releases,
    sinks,
    streams,
    tasks,
)
from hub.api.context import ApiContext
from hub.api.errors import errors_as_json
from hub.api.listener import CappedSite
from hub.api.live import LiveFeed
from hub.api.params import MAX_BODY
from hub.api.routing import Guard, Route
from hub.paths import HubPaths
from outpost import tls


class PortInUseError(OSError):
    """The web endpoint cannot listen where it is configured; the message says how to
    move it."""


logger = logging.getLogger(__name__)


def build_routes(ctx: ApiContext, feed: LiveFeed) -> list[Route]:
    """Every route of the API, from the one table the guard and the document share;
    `feed` is the dashboard's live stream."""
    routes: list[Route] = [
        *enroll.routes(ctx),
        *fleet.routes(ctx),
        *streams.routes(ctx),
        *tasks.routes(ctx),
        *policy.routes(ctx),
        *releases.routes(ctx),
        *admin.routes(ctx),
        *drift.routes(ctx),
        *sinks.routes(ctx),
        *bundles.routes(ctx),
        *agentreleases.routes(ctx),
        *explain.routes(ctx),
        *dashboard.routes(ctx, feed),
    ]

    @functools.cache
    def document() -> dict[str, Any]:
        return openapi.build(routes)  # all routes, observe's own included (appended below)

    routes += observe.routes(ctx, document)
    return routes


def build_app(ctx: ApiContext, routes: list[Route]) -> web.Application:
    """The aiohttp application: routes installed behind their guard."""
    config = ctx.config
    guard = Guard(
        store=ctx.store,
        tokens=ctx.tokens,
        metrics=ctx.metrics,
        token_key=ctx.token_key.public_key(),
        per_subject=RateLimiter(rate=config.api_rate_per_s, burst=config.api_rate_burst),
        auth_failures=RateLimiter(
            rate=config.auth_failures_per_min / 60, burst=config.auth_failures_per_min
        ),
    )
    # The largest body any route takes; each route's own limit is checked in `params.read`.
    largest = max(config.api_max_body_bytes, config.api_max_task_body_bytes)
    app = web.Application(middlewares=[errors_as_json], client_max_size=largest)
    app.on_response_prepare.append(_security_headers)
    app[MAX_BODY] = config.api_max_body_bytes
    for route in routes:
        app.router.add_route(route.method, route.path, guard.wrap(route))
    return app


# On every answer that does not set its own: an API key or bootstrap token in a body is
# never kept by a cache, no answer is read as another type than it says, and a browser
# that reached the hub once keeps to HTTPS (the API is served on nothing else).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Strict-Transport-Security": "max-age=31536000",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class WebServer:
    """Owns the HTTPS listener."""

    def __init__(self, paths: HubPaths, ctx: ApiContext) -> None:
        self._paths = paths
        self._ctx = ctx
        self._runner: web.AppRunner | None = None
        self.site: CappedSite | None = None
        self.feed = LiveFeed(
            dashboard.Snapshots(ctx),
            interval=dashboard.TICK_S,
            max_listeners=dashboard.MAX_STREAMS,
        )
        self.routes = build_routes(ctx, self.feed)
        self.app = build_app(ctx, self.routes)

    async def start(self) -> None:
        """Listen; raise `PortInUseError` naming the setting that moves the port."""
        # Loading the key and certificate reads files: off the event loop.
        # Devices present their certificate to download models; people and tools use
        # tokens and present none.
        context = await asyncio.to_thread(
            functools.partial(
                tls.server_context,
                self._paths.server_cert,
                self._paths.server_key,
                client_ca=self._paths.ca_cert,
                client_cert_optional=True,
            )
        )
        config = self._ctx.config
        # An idle connection (one that sent no request yet, or only part of one) is
        # closed after the header timeout; a live stream is a request, not idle.
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=config.web_header_timeout_s
        )
        await self._runner.setup()
        self.site = site = CappedSite(
            self._runner,
            config.web_host,
            config.web_port,
            ssl_context=context,
            per_address=config.web_max_conns_per_address,
            handshake_timeout=config.web_header_timeout_s,
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno != errno.EADDRINUSE:
                raise PortInUseError(
                    f"cannot listen on {config.web_host}:{config.web_port}: {exc.strerror}"
                ) from exc
            raise PortInUseError(
                f"port {config.web_port} on {config.web_host} is in use (another program "
                "listens there): set web_port in hub.toml or --web-port"
            ) from exc
        logger.info("web endpoint on %s", config.hub_url)

    async def stop(self) -> None:
        # First end the live streams: the server waits for open handlers when it stops.
        await self.feed.close()
        if self._runner is not None:
            await self._runner.cleanup()
