"""Policy routes: the layers (admin writes, every change audited) and each device's
effective policy with the version it runs (drift when that lags)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from aiohttp import web
from msgspec import Meta

from hub.api import devicerefs, params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet import labels
from hub.store import Layer
from hub.store.policy import undeliverable_with
from outpost import policy
from outpost.schema import Struct

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class LayerIn(Struct, frozen=True):
    """A policy layer: `fleet` (named fleet), a group (a label selector and a rank:
    lower ranks apply first) or a device override."""

    scope: Annotated[Literal["fleet", "group", "device"], Meta(description="what it applies to")]
    document: Annotated[
        dict[str, Any],
        Meta(description="the policy fields it sets (any subset; see the policy schema)"),
    ]
    selector: Annotated[dict[str, str], Meta(description="group: labels a device must carry")] = {}
    device: Annotated[str, Meta(max_length=64, description="device: its id or name")] = ""
    rank: Annotated[int, Meta(ge=-1000, le=1000, description="group: merge order among groups")] = 0


class LayerOut(Struct, frozen=True):
    """A policy layer as stored, and who wrote it last."""

    name: Annotated[str, Meta(description="layer name")]
    scope: Annotated[str, Meta(description="fleet, group or device")]
    selector: Annotated[dict[str, str], Meta(description="group selector")]
    device: Annotated[str | None, Meta(description="device of an override")]
    rank: Annotated[int, Meta(description="merge order among groups")]
    document: Annotated[dict[str, Any], Meta(description="the fields it sets")]
    updated_at: Annotated[float, Meta(description="epoch seconds")]
    updated_by: Annotated[str, Meta(description="subject of the token that wrote it")]

    @classmethod
    def of(cls, x: Layer) -> LayerOut:
        return cls(
            x.name, x.scope, x.selector, x.device_id, x.rank, x.document, x.updated_at, x.updated_by
        )


class DevicePolicyOut(Struct, frozen=True):
    """A device's effective policy, its layers, and the version it runs."""

    device: Annotated[str, Meta(description="device id")]
    version: Annotated[int, Meta(description="version the hub published (0: none yet)")]
    applied_version: Annotated[int, Meta(description="version the device reports it runs")]
    rejected_version: Annotated[int, Meta(description="last version the device refused (0: none)")]
    reason: Annotated[str, Meta(description="why it refused it")]
    undeliverable: Annotated[
        str,
        Meta(
            description="why the hub cannot send it this version (its signed policy is "
            "larger than a device reads): empty when it can"
        ),
    ]
    drift: Annotated[
        bool,
        Meta(
            description="the device runs an older version than the one published, or than "
            "the one the hub cannot send it"
        ),
    ]
    layers: Annotated[list[str], Meta(description="layers applied, in merge order")]
    effective: Annotated[
        dict[str, Any],
        Meta(
            description="the fields its layers set, merged; the device's own settings hold the rest"
        ),
    ]


def routes(ctx: ApiContext) -> list[Route]:
    async def list_layers(request: web.Request) -> web.Response:
        found = await ctx.store.policy_layers()
        return params.answer(params.Items([LayerOut.of(x) for x in found]))

    async def put_layer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await params.json_body(request, LayerIn)
        if not NAME.fullmatch(name):
            raise bad_field("path.name", f"layer name must match {NAME.pattern}")
        if (body.scope == "fleet") != (name == "fleet"):
            raise bad_field("body.scope", "the layer named fleet, and only it, has scope fleet")
        if body.scope == "group":
            if not body.selector:
                raise bad_field("body.selector", "a group layer needs a label selector")
            try:
                labels.check(body.selector, "body.selector")
            except ValueError as exc:
                raise bad_field("body.selector", str(exc)) from exc
        device_id = await ctx.store.resolve_device(body.device) if body.scope == "device" else None
        if body.scope == "device" and device_id is None:
            raise bad_field("body.device", f"no device {body.device!r}")
        try:
            document = policy.check_layer(body.document, "body.document")
        except policy.PolicyError as exc:
            raise bad_field("body.document", str(exc)) from exc
        request[AUDIT_DETAIL] = {"layer": name, "scope": body.scope, "document": document}
        layer = Layer(
            name=name,
            scope=body.scope,
            selector=body.selector if body.scope == "group" else {},
            device_id=device_id,
            rank=body.rank,
            document=document,
            updated_at=time.time(),
            updated_by=request[PRINCIPAL].subject,
        )
        # Refused before it is stored: a policy too large for a device never reaches it.
        if found := await ctx.store.run(undeliverable_with, layer):
            device, why = found
            whose = f"device {device}'s merged policy" if device else "the layer alone"
            raise bad_field("body.document", f"{whose} could not be sent: {why}")
        await ctx.store.put_policy_layer(layer)
        await ctx.policies.refresh()
        return params.answer(LayerOut.of(layer))

    async def delete_layer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        request[AUDIT_DETAIL] = {"layer": name}
        if not await ctx.store.delete_policy_layer(name):
            raise ApiError(404, "not_found", f"no policy layer {name!r}")
        await ctx.policies.refresh()
        return web.json_response({"deleted": name})

    async def device_policy(request: web.Request) -> web.Response:
        device_id = await devicerefs.device_id(request, ctx.store)
        found = await ctx.store.device_policy(device_id)
        if found is None:
            raise ApiError(404, "not_found", f"no device {device_id!r}")
        out = DevicePolicyOut(
            device=device_id,
            version=found.version,
            applied_version=found.applied_version,
            rejected_version=found.rejected_version,
            reason=found.reason,
            undeliverable=found.undeliverable,
            drift=(found.published or bool(found.undeliverable))
            and found.applied_version < found.version,
            layers=found.layers,
            effective=found.document,
        )
        return params.answer(out)

    name = Param("name", "path", "layer name (fleet, or a group or override name)")
    return [
        Route(
            "GET",
            "/api/v1/policy/layers",
            "viewer",
            list_layers,
            "List policy layers",
            "policy",
            response=params.Items[LayerOut],
        ),
        Route(
            "PUT",
            "/api/v1/policy/layers/{name}",
            "admin",
            put_layer,
            "Create or replace a policy layer; devices get their new policy at once",
            "policy",
            action="policy.layer.put",
            body=LayerIn,
            response=LayerOut,
            params=(name,),
            errors=(400,),
        ),
        Route(
            "DELETE",
            "/api/v1/policy/layers/{name}",
            "admin",
            delete_layer,
            "Delete a policy layer",
            "policy",
            action="policy.layer.delete",
            params=(name,),
            errors=(404,),
        ),
        Route(
            "GET",
            "/api/v1/devices/{id}/policy",
            "viewer",
            device_policy,
            "A device's effective policy, its layers, and the version it runs",
            "policy",
            response=DevicePolicyOut,
            params=(devicerefs.DEVICE_PARAM,),
            errors=(404,),
        ),
    ]
