"""Drift routes: per model version, each device's answers against the fleet's (PSI)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from hub import drift
from hub.api.context import ApiContext
from hub.api.errors import ApiError
from hub.api.routing import Param, Route
from hub.store import HubStore
from outpost import schema


@dataclass(frozen=True)
class DeviceDriftOut:
    """One device's recent answers of one model version against the rest of the fleet."""

    device_id: str = schema.setting(help="device id")
    count: int = schema.setting(help="its inferences of this version in the window")
    psi_labels: float | None = schema.setting(help="PSI of its label distribution (null: too few)")
    psi_confidence: float | None = schema.setting(help="PSI of its confidence histogram")
    level: str = schema.setting(help="stable (< 0.1), moderate, drift (>= 0.25) or insufficient")
    flagged: bool = schema.setting(help="drifting: either PSI at or over 0.25")

    @classmethod
    def of(cls, d: drift.DeviceDrift) -> DeviceDriftOut:
        return cls(d.device_id, d.count, d.psi_labels, d.psi_confidence, d.level, d.flagged)


@dataclass(frozen=True)
class VersionDriftOut:
    """The devices of one model version, each against the others."""

    model: str = schema.setting(help="model name")
    version: str = schema.setting(help="model version")
    devices: list[DeviceDriftOut] = schema.setting(help="every device with inferences of it")
    flagged: list[str] = schema.setting(help="the devices flagged as drifting")


@dataclass(frozen=True)
class DriftOut:
    """Drift of every model version the fleet ran in the window."""

    window_s: float = schema.setting(help="how far back the comparison looks, seconds")
    min_count: int = schema.setting(help="inferences a device (and the rest) needs to be judged")
    threshold: float = schema.setting(help="PSI from which a device is flagged")
    items: list[VersionDriftOut] = schema.setting(help="per model version")


@dataclass(frozen=True)
class VersionOfDevice:
    """One model version a device ran, and its drift."""

    model: str = schema.setting(help="model name")
    version: str = schema.setting(help="model version")
    drift: DeviceDriftOut = schema.setting(help="the device against the rest of the fleet")


@dataclass(frozen=True)
class DeviceDriftsOut:
    """One device's drift, per model version it ran in the window."""

    device_id: str = schema.setting(help="device id")
    flagged: bool = schema.setting(help="drifting on any model version")
    models: list[VersionOfDevice] = schema.setting(help="per model version")


async def fleet_drift(store: HubStore, *, now: float | None = None) -> list[drift.VersionDrift]:
    """Every model version's drift over the last `drift.WINDOW_S`."""
    since = (time.time() if now is None else now) - drift.WINDOW_S
    return drift.evaluate(await store.model_distributions(since=since))


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
        return web.json_response(schema.dump(out))

    async def get_device_drift(request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if await ctx.store.device(device_id) is None:
            raise ApiError(404, "not_found", f"no device {device_id!r}")
        mine = [
            VersionOfDevice(v.model, v.version, DeviceDriftOut.of(d))
            for v in await fleet_drift(ctx.store)
            for d in v.devices
            if d.device_id == device_id
        ]
        out = DeviceDriftsOut(device_id, any(m.drift.flagged for m in mine), mine)
        return web.json_response(schema.dump(out))

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
            params=(Param("id", "path", "device id"),),
            errors=(404,),
        ),
    ]
