"""Roll-out routes: start a staged or shadow roll-out of a model (or of the agent
itself), list roll-outs and follow one per device, halt one.

Apart from the model routes (releases.py) because a roll-out is a resource of its own,
with a life (canary, rolling, halted) and a progress per device, where a model is only
uploaded and downloaded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet import labels
from hub.store import Rollout, RolloutRefusedError, shadows
from outpost import schema
from outpost.agentrelease import ROLLOUT_NAME as AGENT
from outpost.schema import Struct


class PromoteIf(Struct, frozen=True, forbid_unknown_fields=True):
    """When a shadow roll-out becomes a staged one; otherwise it stops."""

    agreement_min: Annotated[
        float, Meta(ge=0, le=1, description="the candidate's top-1 agreement with live, at least")
    ] = 0.97
    latency_ratio_max: Annotated[
        float,
        Meta(gt=0, le=100, description="its mean latency over the live one's, at most"),
    ] = 1.2
    min_samples: Annotated[
        int, Meta(ge=1, le=10_000_000, description="inputs compared before it is judged")
    ] = 500


class RolloutIn(Struct, frozen=True):
    """A staged roll-out: canaries first, the rest when every canary runs it."""

    model: Annotated[str, Meta(max_length=64, description="model name (or give `agent`)")] = ""
    version: Annotated[str, Meta(max_length=32, description="model version")] = ""
    agent: Annotated[
        str,
        Meta(
            max_length=32,
            description="an agent release's version, to roll the agent itself out "
            "(instead of model and version)",
        ),
    ] = ""
    selector: Annotated[
        dict[str, str], Meta(description="labels a device must carry (empty: every device)")
    ] = {}
    canary_share: Annotated[
        float,
        Meta(
            ge=0.0,
            le=1.0,
            description="share of the targets released first (at least one device)",
        ),
    ] = 0.1
    mode: Annotated[
        Literal["staged", "shadow"],
        Meta(
            description="staged: canaries, then the rest; shadow: first run beside the live "
            "version on sampled inputs, judged by promote_if"
        ),
    ] = "staged"
    promote_if: Annotated[
        PromoteIf | None, Meta(description="a shadow roll-out's criteria (defaults if left out)")
    ] = None


class RolloutDeviceOut(Struct, frozen=True):
    """One device's progress in a roll-out."""

    device: Annotated[str, Meta(description="device id")]
    stage: Annotated[str, Meta(description="canary or rest")]
    state: Annotated[
        str,
        Meta(
            description="waiting, released, downloading, blocked (cannot take it yet), "
            "active, failed, rolled_back, superseded (a newer roll-out took the device), "
            "withdrawn (the device was revoked: neither a failure nor a success), or "
            "shadowing"
        ),
    ]
    detail: Annotated[str, Meta(description="why it failed, rolled back or was withdrawn")]
    released_at: Annotated[float | None, Meta(description="when it was given the release")]
    updated_at: Annotated[float, Meta(description="last change, epoch seconds")]


class RolloutOut(Struct, frozen=True):
    """A staged roll-out and its progress."""

    id: Annotated[int, Meta(description="roll-out id")]
    kind: Annotated[str, Meta(description="model, or agent (an agent release)")]
    model: Annotated[str, Meta(description=f"model name ({AGENT} for an agent release)")]
    version: Annotated[str, Meta(description="model or agent version")]
    selector: Annotated[dict[str, str], Meta(description="labels its devices carry")]
    canary_share: Annotated[float, Meta(description="share released first")]
    state: Annotated[str, Meta(description="canary, rolling, completed, halted or superseded")]
    reason: Annotated[str, Meta(description="why it halted, or how many devices failed")]
    counts: Annotated[dict[str, int], Meta(description="devices by state")]
    created_at: Annotated[float, Meta(description="epoch seconds")]
    created_by: Annotated[str, Meta(description="subject of the token that started it")]
    updated_at: Annotated[float, Meta(description="last change, epoch seconds")]
    devices: Annotated[list[RolloutDeviceOut], Meta(description="progress per device")]
    mode: Annotated[str, Meta(description="staged or shadow")] = "staged"
    criteria: Annotated[
        dict[str, float] | None, Meta(description="a shadow roll-out's promote_if")
    ] = None
    shadow: Annotated[
        dict[str, Any] | None,
        Meta(
            description="a shadow roll-out's comparison, live beside candidate: samples, "
            "progress toward min_samples, agreement, confusion (live|candidate label: "
            "count), latency and confidence of each (GET /api/v1/rollouts/{id} only)"
        ),
    ] = None

    @classmethod
    def of(cls, r: Rollout, shadow: dict[str, Any] | None = None) -> RolloutOut:
        return cls(
            r.id,
            "agent" if r.name == AGENT else "model",
            r.name,
            r.version,
            r.selector,
            r.canary_share,
            r.state,
            r.reason,
            r.counts,
            r.created_at,
            r.created_by,
            r.updated_at,
            [
                RolloutDeviceOut(
                    d.device_id, d.stage, d.state, d.detail, d.released_at, d.updated_at
                )
                for d in r.devices
            ],
            r.mode,
            r.criteria,
            shadow,
        )


class HaltIn(Struct, frozen=True):
    """Why a roll-out is halted by hand (optional)."""

    reason: Annotated[str, Meta(max_length=500, description="why, for the record")] = ""


def routes(ctx: ApiContext) -> list[Route]:
    async def start_rollout(request: web.Request) -> web.Response:
        body = await params.json_body(request, RolloutIn)
        try:
            labels.check(body.selector, "body.selector")
        except ValueError as exc:
            raise bad_field("body.selector", str(exc)) from exc
        if body.agent and (body.model or body.version):
            raise bad_field("body.agent", "give agent alone, or model and version, not both")
        if not body.agent and not (body.model and body.version):
            raise bad_field("body.model", "give model and version (or agent)")
        request[AUDIT_DETAIL] = schema.dump(body)
        assert ctx.rollouts is not None
        try:
            rollout = await ctx.rollouts.start_rollout(
                name=AGENT if body.agent else body.model,
                version=body.agent or body.version,
                selector=body.selector,
                canary_share=body.canary_share,
                by=request[PRINCIPAL].subject,
                mode=body.mode,
                criteria=schema.dump(body.promote_if or PromoteIf())
                if body.mode == "shadow"
                else None,
            )
        except RolloutRefusedError as exc:
            raise ApiError(422, "rollout_refused", str(exc)) from exc
        return params.answer(RolloutOut.of(rollout), status=201)

    async def list_rollouts(request: web.Request) -> web.Response:
        found = await ctx.store.rollouts()
        return params.answer(params.Items([RolloutOut.of(r) for r in found]))

    def rollout_number(request: web.Request) -> int | None:
        text = request.match_info["id"]
        # SQLite integers are 64-bit, and str.isdigit() holds for "²", which int() refuses.
        plausible = text.isascii() and text.isdigit() and len(text) <= 18
        return int(text) if plausible else None

    async def get_rollout(request: web.Request) -> web.Response:
        number = rollout_number(request)
        rollout = await ctx.store.rollout(number) if number is not None else None
        if rollout is None:
            raise ApiError(404, "not_found", f"no roll-out {request.match_info['id']!r}")
        found = (
            await ctx.store.run(shadows.summary, rollout.id) if rollout.mode == "shadow" else None
        )
        return params.answer(RolloutOut.of(rollout, found))

    async def halt_rollout(request: web.Request) -> web.Response:
        body = await params.json_body(request, HaltIn) if request.can_read_body else HaltIn()
        number = rollout_number(request)
        request[AUDIT_DETAIL] = {"rollout": request.match_info["id"], "reason": body.reason}
        assert ctx.rollouts is not None
        by = request[PRINCIPAL].subject
        reason = f"halted by {by}" + (f": {body.reason}" if body.reason else "")
        moved = await ctx.rollouts.halt(number, reason) if number is not None else None
        if moved is None:
            raise ApiError(404, "not_found", f"no roll-out {request.match_info['id']!r}")
        if not moved.halted_now:
            raise ApiError(
                409, "conflict", f"roll-out {number} is not in progress: it is {moved.state}"
            )
        rollout = await ctx.store.rollout(moved.rollout_id)
        assert rollout is not None
        return params.answer(RolloutOut.of(rollout))

    rollout_id = Param("id", "path", "roll-out id", type="integer")
    return [
        Route(
            "POST",
            "/api/v1/rollouts",
            "admin",
            start_rollout,
            "Start a staged roll-out of a model to the devices a selector matches",
            "models",
            action="rollout.start",
            body=RolloutIn,
            response=RolloutOut,
            status=201,
            errors=(422,),
        ),
        Route(
            "GET",
            "/api/v1/rollouts",
            "viewer",
            list_rollouts,
            "List roll-outs, newest first (without per-device rows)",
            "models",
            response=params.Items[RolloutOut],
        ),
        Route(
            "GET",
            "/api/v1/rollouts/{id}",
            "viewer",
            get_rollout,
            "A roll-out's state and progress per device",
            "models",
            response=RolloutOut,
            params=(rollout_id,),
            errors=(404,),
        ),
        Route(
            "POST",
            "/api/v1/rollouts/{id}/halt",
            "admin",
            halt_rollout,
            "Halt a roll-out in progress: devices not yet given the version never get it, "
            "and those that were go back to what they ran before",
            "models",
            action="rollout.halt",
            body=HaltIn,
            response=RolloutOut,
            params=(rollout_id,),
            errors=(404, 409),
        ),
    ]
