"""Sink routes: each sink's state, its dead letters, and a replay from a time."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError
from hub.api.routing import AUDIT_DETAIL, Param, Route
from hub.sinks.service import SinkStatus, statuses
from hub.store import outbox
from outpost.schema import FINITE, Struct


class SinkOut(Struct, frozen=True):
    """A sink and how it is doing."""

    name: Annotated[str, Meta(description="its name in hub.toml")]
    kind: Annotated[str, Meta(description="nats, rabbitmq or webhook")]
    url: Annotated[str, Meta(description="where it delivers")]
    state: Annotated[
        str,
        Meta(
            description="starting, delivering, idle, failing (retrying with back-off), failed "
            "(its configuration is refused: see error), overflowed, or unknown (never ran)"
        ),
    ]
    error: Annotated[str, Meta(description="why it fails, if it does")]
    position: Annotated[int, Meta(description="the outbox id it has delivered through")]
    lag_events: Annotated[int, Meta(description="events it has yet to deliver")]
    lag_seconds: Annotated[float, Meta(description="age of the oldest of them")]
    delivered: Annotated[int, Meta(description="events delivered")]
    retried: Annotated[int, Meta(description="failed attempts, retried")]
    dead_lettered: Annotated[int, Meta(description="events refused for good")]
    overflowed: Annotated[int, Meta(description="events skipped, beyond its lag bounds")]
    updated_at: Annotated[float | None, Meta(description="last change, epoch seconds")]

    @classmethod
    def of(cls, s: SinkStatus) -> SinkOut:
        return cls(
            s.name,
            s.kind,
            s.url,
            s.state,
            s.error,
            s.position,
            s.lag_events,
            s.lag_seconds,
            s.delivered,
            s.retried,
            s.dead_lettered,
            s.overflowed,
            s.updated_at,
        )


class DeadLetterOut(Struct, frozen=True):
    """An event a sink refused for good."""

    id: Annotated[int, Meta(description="dead letter id")]
    event_id: Annotated[str, Meta(description="the event's id (its ce-id)")]
    at: Annotated[float, Meta(description="when it was refused, epoch seconds")]
    type: Annotated[str, Meta(description="the event's type")]
    subject: Annotated[str, Meta(description="its device, if any")]
    event: Annotated[dict[str, Any], Meta(description="the CloudEvents JSON that was sent")]
    reason: Annotated[str, Meta(description="what the receiver answered")]


class ReplayIn(Struct, frozen=True):
    """Deliver a sink's events again from a time on (for a consumer that lost some)."""

    from_time: Annotated[
        float, Meta(ge=0, le=FINITE, description="epoch seconds: every kept event from then")
    ]


class ReplayOut(Struct, frozen=True):
    """Where the sink goes on from."""

    sink: Annotated[str, Meta(description="the sink")]
    position: Annotated[int, Meta(description="its cursor now: it delivers what follows")]
    events: Annotated[int, Meta(description="events it will deliver again")]


def routes(ctx: ApiContext) -> list[Route]:
    def configured(request: web.Request) -> str:
        name = request.match_info["name"]
        if not any(s.name == name for s in ctx.config.sinks):
            known = ", ".join(s.name for s in ctx.config.sinks) or "none configured"
            raise ApiError(404, "not_found", f"no sink {name!r} (sinks: {known})")
        return name

    async def list_sinks(request: web.Request) -> web.Response:
        found = await statuses(ctx.store, ctx.config.sinks)
        return params.answer(params.Items([SinkOut.of(s) for s in found]))

    async def dead_letters(request: web.Request) -> web.Response:
        name = configured(request)
        size = params.limit(request)
        before = params.decode_cursor(request, int)
        rows = await ctx.store.run(
            lambda db: outbox.dead_letters(db, name, before=before, limit=size + 1)
        )
        page = params.page(
            rows,
            size,
            lambda r: DeadLetterOut(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]),
            lambda r: r[0],
        )
        return params.answer(page)

    async def replay(request: web.Request) -> web.Response:
        name = configured(request)
        body = await params.json_body(request, ReplayIn)
        request[AUDIT_DETAIL] = {"sink": name, "from_time": body.from_time}
        position = await ctx.store.run(outbox.rewind, name, body.from_time, time.time())
        if position is None:
            raise ApiError(
                409, "conflict", f"sink {name} has not run yet: there is nothing to replay"
            )
        newest, _ = await ctx.store.run(outbox.head)
        return params.answer(ReplayOut(name, position, max(0, newest - position)))

    sink = Param("name", "path", "sink name")
    return [
        Route(
            "GET",
            "/api/v1/sinks",
            "viewer",
            list_sinks,
            "The configured sinks: state, lag, delivered, retried, dead-lettered, overflowed",
            "sinks",
            response=params.Items[SinkOut],
        ),
        Route(
            "GET",
            "/api/v1/sinks/{name}/dead-letters",
            "operator",
            dead_letters,
            "Events a sink refused for good (a webhook's 4xx), newest first",
            "sinks",
            response=params.Page[DeadLetterOut],
            params=(sink,),
            errors=(404,),
        ),
        Route(
            "POST",
            "/api/v1/sinks/{name}/replay",
            "admin",
            replay,
            "Deliver a sink's kept events (sink_keep_s) again from a time on",
            "sinks",
            action="sink.replay",
            body=ReplayIn,
            response=ReplayOut,
            params=(sink,),
            errors=(404, 409),
        ),
    ]
