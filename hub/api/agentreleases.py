"""Agent release routes: the releases the hub took (hub/fleet/agentreleases.py)."""

from __future__ import annotations

import json
from typing import Annotated

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.routing import Route
from hub.store import agentreleases as registry
from outpost.schema import Struct


class AgentReleaseOut(Struct, frozen=True):
    """An agent release the hub took and signed."""

    version: Annotated[str, Meta(description="its version")]
    platforms: Annotated[list[str], Meta(description="the machines it has wheels for")]
    files: Annotated[int, Meta(description="wheels in it")]
    size: Annotated[int, Meta(description="bytes of all its wheels")]
    min_hub_version: Annotated[str, Meta(description="the oldest hub that can roll it out")]
    min_agent_version: Annotated[str, Meta(description="the oldest agent that may update to it")]
    uploaded_at: Annotated[float, Meta(description="when the hub took it, epoch seconds")]
    uploaded_by: Annotated[str, Meta(description="who uploaded it")]


def routes(ctx: ApiContext) -> list[Route]:
    async def list_releases(request: web.Request) -> web.Response:
        found = await ctx.store.run(registry.all_releases)
        out = []
        for r in found:
            m = json.loads(r.manifest)
            out.append(
                AgentReleaseOut(
                    r.version,
                    m["platforms"],
                    len(m["files"]),
                    sum(f["size"] for f in m["files"]),
                    m["min_hub_version"],
                    m["min_agent_version"],
                    r.uploaded_at,
                    r.uploaded_by,
                )
            )
        return params.answer(params.Items(out))

    return [
        Route(
            "GET",
            "/api/v1/agent-releases",
            "viewer",
            list_releases,
            "Agent releases the hub took and signed (outpost-hub agent-releases upload)",
            "fleet",
            response=params.Items[AgentReleaseOut],
        )
    ]
