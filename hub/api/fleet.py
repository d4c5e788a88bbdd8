"""Fleet routes: list, read, label and revoke devices."""

from __future__ import annotations

import time
from typing import Annotated

from aiohttp import web
from msgspec import Meta

from hub.api import devicerefs, params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.models import DeviceOut
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet import labels
from hub.fleet.revocation import UnknownDeviceError
from hub.store import DeviceEvent, NameTakenError, TooManyLabelsError
from outpost import devicenames as names
from outpost import schema
from outpost.schema import Struct


class DevicePatch(Struct, frozen=True):
    """Changes to a device: labels are merged (a null value removes that label); a name
    renames it."""

    labels: Annotated[
        dict[str, str | None], Meta(description="labels to set (or remove with null)")
    ] = {}
    name: (
        Annotated[str, Meta(max_length=names.MAX_LENGTH, description=f"its new name: {names.RULE}")]
        | None
    ) = None


class DeviceEventOut(Struct, frozen=True):
    """Something that happened to a device."""

    at: Annotated[float, Meta(description="epoch seconds")]
    kind: Annotated[
        str,
        Meta(
            description="enrolled, online, offline, model_activated, model_failed, "
            "model_rolled_back, policy_applied, policy_refused, renewed, revoked, renamed "
            "or relabelled"
        ),
    ]
    detail: Annotated[str, Meta(description="what, in words")]

    @classmethod
    def of(cls, e: DeviceEvent) -> DeviceEventOut:
        return cls(e.at, e.kind, e.detail)


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
        device = await ctx.store.find_device(request.match_info["id"])
        if device is None:
            raise ApiError(404, "not_found", f"no device {request.match_info['id']!r}")
        return params.answer(DeviceOut.of(device))

    async def patch_device(request: web.Request) -> web.Response:
        patch = await params.json_body(request, DevicePatch)
        try:
            labels.check(patch.labels, "body.labels")
        except ValueError as exc:
            raise bad_field("body.labels", str(exc)) from exc
        if patch.name is not None:
            try:
                names.check(patch.name, "body.name")
            except ValueError as exc:
                raise ApiError(422, "bad_name", str(exc), field="body.name") from exc
        device_id = await devicerefs.device_id(request, ctx.store)
        request[AUDIT_DETAIL] = {"device": device_id, "labels": patch.labels}
        if patch.name is not None:
            request[AUDIT_DETAIL]["name"] = patch.name
        try:
            device = await ctx.store.update_device(
                device_id,
                labels=patch.labels,
                name=patch.name,
                now=time.time(),
                max_labels=labels.MAX_LABELS,
            )
        except NameTakenError as exc:
            raise ApiError(409, "name_taken", str(exc), field="body.name") from exc
        except TooManyLabelsError as exc:
            raise bad_field("body.labels", str(exc)) from exc
        if device is None:
            raise ApiError(404, "not_found", f"no device {device_id!r}")
        if patch.labels:
            await ctx.policies.refresh([device_id])  # its groups may have changed
        return params.answer(DeviceOut.of(device))

    async def device_events(request: web.Request) -> web.Response:
        size = params.limit(request)
        device_id = await devicerefs.device_id(request, ctx.store)
        found = await ctx.store.device_events(
            device_id, before=params.decode_cursor(request, int), limit=size + 1
        )
        page = params.page(found, size, DeviceEventOut.of, lambda e: e.id)
        return params.answer(page)

    async def revoke_device(request: web.Request) -> web.Response:
        device_id = await devicerefs.device_id(request, ctx.store)
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

    device_id = devicerefs.DEVICE_PARAM
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
            "Change a device's labels or name",
            "fleet",
            action="device.update",
            body=DevicePatch,
            response=DeviceOut,
            params=(device_id,),
            errors=(404, 409, 422),
        ),
        Route(
            "GET",
            "/api/v1/devices/{id}/events",
            "viewer",
            device_events,
            "A device's event log, newest first: link lost and restored, models activated "
            "or failed, policy applied or refused, renewals, revocation, renames",
            "fleet",
            response=params.Page[DeviceEventOut],
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
