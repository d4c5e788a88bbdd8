"""Drift routes: per model version, each device's answers against the fleet's (PSI)."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from msgspec import Meta

from hub.api import devicerefs, params
from hub.api.context import ApiContext
from hub.api.routing import Route
from hub.models import drift
from hub.models.driftwatch import fleet_drift
from outpost.schema import Struct


class DeviceDriftOut(Struct, frozen=True):
    """One device's recent answers of one model version against the rest of the fleet."""

    device_id: Annotated[str, Meta(description="device id")]
    count: Annotated[int, Meta(description="its inferences of this version in the window")]
    psi_labels: Annotated[
        float | None, Meta(description="PSI of its label distribution (null: too few)")
    ]
    psi_confidence: Annotated[float | None, Meta(description="PSI of its confidence histogram")]
    level: Annotated[
        str, Meta(description="stable (< 0.1), moderate, drift (>= 0.25) or insufficient")
    ]
    flagged: Annotated[bool, Meta(description="drifting: either PSI at or over 0.25")]

    @classmethod
    def of(cls, d: drift.DeviceDrift) -> DeviceDriftOut:
        return cls(d.device_id, d.count, d.psi_labels, d.psi_confidence, d.level, d.flagged)


class VersionDriftOut(Struct, frozen=True):
    """The devices of one model version, each against the others."""

    model: Annotated[str, Meta(description="model name")]
    version: Annotated[str, Meta(description="model version")]
    devices: Annotated[list[DeviceDriftOut], Meta(description="every device with inferences of it")]
    flagged: Annotated[list[str], Meta(description="the devices flagged as drifting")]


class DriftOut(Struct, frozen=True):
    """Drift of every model version the fleet ran in the window."""

    window_s: Annotated[float, Meta(description="how far back the comparison looks, seconds")]
    min_count: Annotated[
        int, Meta(description="inferences a device (and the rest) needs to be judged")
    ]
    threshold: Annotated[float, Meta(description="PSI from which a device is flagged")]
    items: Annotated[list[VersionDriftOut], Meta(description="per model version")]


class VersionOfDevice(Struct, frozen=True):
    """One model version a device ran, and its drift."""

    model: Annotated[str, Meta(description="model name")]
    version: Annotated[str, Meta(description="model version")]
    drift: Annotated[DeviceDriftOut, Meta(description="the device against the rest of the fleet")]


class DeviceDriftsOut(Struct, frozen=True):
    """One device's drift, per model version it ran in the window."""

    device_id: Annotated[str, Meta(description="device id")]
    flagged: Annotated[bool, Meta(description="drifting on any model version")]
    models: Annotated[list[VersionOfDevice], Meta(description="per model version")]


def routes(ctx: ApiContext) -> list[Route]:
    async def get_drift(request: web.Request) -> web.Response:
        versions = await fleet_drift(ctx.store)
        out = DriftOut(
            drift.WINDOW_S,
            drift.MIN_COUNT,
            drift.DRIFT_FROM,
            [
                VersionDriftOut(
                    v.model, v.version, [DeviceDriftOut.of(d) for d in v.devices], v.flagged
                )
                for v in versions
            ],
        )
        return params.answer(out)

    async def get_device_drift(request: web.Request) -> web.Response:
        device_id = await devicerefs.device_id(request, ctx.store)
        mine = [
            VersionOfDevice(v.model, v.version, DeviceDriftOut.of(d))
            for v in await fleet_drift(ctx.store)
            for d in v.devices
            if d.device_id == device_id
        ]
        out = DeviceDriftsOut(device_id, any(m.drift.flagged for m in mine), mine)
        return params.answer(out)

    return [
        Route(
            "GET",
            "/api/v1/drift",
            "viewer",
            get_drift,
            "Model drift: each device's recent labels and confidences against the fleet's",
            "observability",
            response=DriftOut,
        ),
        Route(
            "GET",
            "/api/v1/devices/{id}/drift",
            "viewer",
            get_device_drift,
            "One device's model drift, per model version",
            "fleet",
            response=DeviceDriftsOut,
            params=(devicerefs.DEVICE_PARAM,),
            errors=(404,),
        ),
    ]
