"""Fleet routes: list, read, label and revoke devices."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.models import DeviceOut
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet import labels
from hub.fleet.revocation import UnknownDeviceError
from outpost import schema
from outpost.schema import Struct


class DevicePatch(Struct, frozen=True):
    """Changes to a device: labels are merged; a null value removes that label."""

    labels: Annotated[
        dict[str, str | None], Meta(description="labels to set (or remove with null)")
    ]


class RevokedOut(Struct, frozen=True):
    """What revoking a device did."""

    device_id: Annotated[str, Meta(description="the revoked device")]
    revoked_at: Annotated[float, Meta(description="when it was (first) revoked, epoch seconds")]
    certificates: Annotated[int, Meta(description="its certificates now listed in the CRL")]
    broker_reloaded: Annotated[
        bool,
        Meta(
            description="the broker re-read the CRL (the managed one, or an external one "
            "through broker_reload_command; false when it did not confirm or none is set)"
        ),
    ]
    disconnected: Annotated[bool, Meta(description="its broker session, if any, was closed")]
    already_revoked: Annotated[
        bool, Meta(description="it was revoked before this request (the steps were done again)")
    ] = False
    proven: Annotated[
        bool,
        Meta(
            description="the broker refused a certificate of this device as revoked after "
            "the reload"
        ),
    ] = False
    proof_failure: Annotated[str, Meta(description="why the proof failed, if it did")] = ""


def routes(ctx: ApiContext) -> list[Route]:
    async def list_devices(request: web.Request) -> web.Response:
        size = params.limit(request)
        try:
            selector = labels.parse_selector(request.query.getall("label", []), "query.label")
        except ValueError as exc:
            raise bad_field("query.label", str(exc)) from exc
        found = await ctx.store.list_devices(
            online=params.boolean(request, "online"),
            profile=request.query.get("profile"),
            labels=selector,
            after=params.decode_cursor(request, str),
            limit=size + 1,
        )
        page = params.page(found, size, DeviceOut.listed, lambda d: d.device_id)
        return params.answer(page)

    async def get_device(request: web.Request) -> web.Response:
        device = await ctx.store.device(request.match_info["id"])
        if device is None:
            raise ApiError(404, "not_found", f"no device {request.match_info['id']!r}")
        return params.answer(DeviceOut.of(device))

    async def patch_device(request: web.Request) -> web.Response:
        patch = await params.json_body(request, DevicePatch)
        try:
            labels.check(patch.labels, "body.labels")
        except ValueError as exc:
            raise bad_field("body.labels", str(exc)) from exc
        device_id = request.match_info["id"]
        request[AUDIT_DETAIL] = {"device": device_id, "labels": patch.labels}
        device = await ctx.store.update_labels(device_id, patch.labels)
        if device is None:
            raise ApiError(404, "not_found", f"no device {device_id!r}")
        await ctx.policies.refresh([device_id])  # its groups may have changed
        return params.answer(DeviceOut.of(device))

    async def revoke_device(request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        request[AUDIT_DETAIL] = {"device": device_id}
        if ctx.rollouts is not None:  # first: what it releases goes out (revoking drops it too)
            await ctx.rollouts.device_revoked(device_id)
        try:
            done = await ctx.revoker.revoke(device_id, by=request[PRINCIPAL].subject)
        except UnknownDeviceError as exc:
            raise ApiError(404, "not_found", f"no device {device_id!r}") from exc
        out = RevokedOut(
            device_id=done.device_id,
            revoked_at=done.revoked_at,
            certificates=done.certificates,
            broker_reloaded=done.broker_reloaded,
            disconnected=done.disconnected,
            already_revoked=done.already_revoked,
            proven=done.broker_reloaded and done.proof_failure is None,
            proof_failure=done.proof_failure or "",
        )
        answer = schema.dump(out)
        request[AUDIT_DETAIL] = answer
        return web.json_response(answer)

    device_id = Param("id", "path", "device id")
    return [
        Route(
            "GET",
            "/api/v1/devices",
            "viewer",
            list_devices,
            "List devices",
            "fleet",
            response=params.Page[DeviceOut],
            params=(
                Param(
                    "online",
                    "query",
                    "only online (true) or offline (false) devices; revoked ones are neither",
                    "boolean",
                ),
                Param("profile", "query", "only devices of this profile"),
                Param("label", "query", "KEY=VALUE; repeat to require several", repeated=True),
            ),
        ),
        Route(
            "GET",
            "/api/v1/devices/{id}",
            "viewer",
            get_device,
            "Read a device",
            "fleet",
            response=DeviceOut,
            params=(device_id,),
            errors=(404,),
        ),
        Route(
            "PATCH",
            "/api/v1/devices/{id}",
            "admin",
            patch_device,
            "Change a device's labels",
            "fleet",
            action="device.update",
            body=DevicePatch,
            response=DeviceOut,
            params=(device_id,),
            errors=(404,),
        ),
        Route(
            "POST",
            "/api/v1/devices/{id}/revoke",
            "admin",
            revoke_device,
            "Revoke a device: the broker refuses its certificates and drops its connection, "
            "and it can no longer renew",
            "fleet",
            action="device.revoke",
            response=RevokedOut,
            params=(device_id,),
            errors=(404,),
        ),
    ]
