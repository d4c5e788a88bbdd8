"""A device in a route's path, by its id or its name: `/api/v1/devices/pump-station` and
`/api/v1/devices/dev-0123456789ab` are the same device."""

from __future__ import annotations

from aiohttp import web

from hub.api.errors import ApiError
from hub.api.routing import Param
from hub.store import HubStore

DEVICE_PARAM = Param("id", "path", "device id or name")


async def device_id(request: web.Request, store: HubStore) -> str:
    """The id of the device the path names; 404 naming it when no device has that id or
    name."""
    ref = request.match_info["id"]
    found = await store.resolve_device(ref)
    if found is None:
        raise ApiError(404, "not_found", f"no device {ref!r} (neither an id nor a name)")
    return found
