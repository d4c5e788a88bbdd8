"""Model and roll-out routes: upload a model (checked, stored, signed), start a staged
roll-out, follow it per device; and the download devices make with their certificate."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from aiohttp import BodyPartReader, web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet import labels
from hub.models.releases import ModelExistsError, ModelRefusedError, Staging
from hub.store import Rollout, RolloutRefusedError, StoredModel, shadows
from outpost import schema
from outpost.agentrelease import ROLLOUT_NAME as AGENT
from outpost.modelbundle import MAX_MODEL_BYTES, MAX_SIDECAR_BYTES, NAME_PATTERN, VERSION_PATTERN
from outpost.schema import Struct

UPLOAD_PARTS = ("model", "manifest", "sample")


class ModelOut(Struct, frozen=True):
    """An uploaded model version."""

    name: Annotated[str, Meta(description="model name")]
    version: Annotated[str, Meta(description="model version")]
    sha256: Annotated[str, Meta(description="sha256 of the .tflite")]
    size: Annotated[int, Meta(description="bytes of the .tflite")]
    labels: Annotated[list[str], Meta(description="one label per output score")]
    description: Annotated[str, Meta(description="what the model is for")]
    uploaded_at: Annotated[float, Meta(description="epoch seconds")]
    uploaded_by: Annotated[str, Meta(description="subject of the token that uploaded it")]

    @classmethod
    def of(cls, m: StoredModel) -> ModelOut:
        labels = m.manifest.get("labels", [])
        description = m.manifest.get("description", "")
        return cls(
            m.name,
            m.version,
            m.sha256,
            m.size,
            list(labels) if isinstance(labels, list) else [],
            str(description),
            m.uploaded_at,
            m.uploaded_by,
        )


class UploadedOut(Struct, frozen=True):
    """A model the hub accepted."""

    model: Annotated[ModelOut, Meta(description="the stored model")]
    checked_with: Annotated[str, Meta(description="runtime that loaded it and ran its sample")]


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
        Meta(description="waiting, released, downloading, active, failed or rolled_back"),
    ]
    detail: Annotated[str, Meta(description="why it failed or rolled back")]
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
        counts: dict[str, int] = {}
        for d in r.devices:
            counts[d.state] = counts.get(d.state, 0) + 1
        return cls(
            r.id,
            "agent" if r.name == AGENT else "model",
            r.name,
            r.version,
            r.selector,
            r.canary_share,
            r.state,
            r.reason,
            counts,
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
    async def upload(request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            raise bad_field(
                "body",
                "send multipart/form-data with parts model (the .tflite), manifest "
                "(model.json) and sample (sample.json)",
            )
        staging = await asyncio.to_thread(Staging, ctx.models.root, MAX_MODEL_BYTES)
        try:
            sha256, docs = await _read_upload(request, staging)
        except BaseException:
            await asyncio.to_thread(staging.discard)
            raise
        request[AUDIT_DETAIL] = {
            "model": docs["manifest"].get("name"),
            "version": docs["manifest"].get("version"),
            "sha256": sha256,
        }
        try:
            checked = await ctx.models.accept(
                staging,
                sha256,
                docs["manifest"],
                docs["sample"],
                by=request[PRINCIPAL].subject,
            )
        except ModelExistsError as exc:
            raise ApiError(409, "conflict", str(exc)) from exc
        except ModelRefusedError as exc:
            raise ApiError(422, "model_refused", str(exc)) from exc
        out = UploadedOut(ModelOut.of(checked.model), checked.runtime)
        return params.answer(out, status=201)

    async def list_models(request: web.Request) -> web.Response:
        found = await ctx.store.models()
        return params.answer(params.Items([ModelOut.of(m) for m in found]))

    async def download(request: web.Request) -> web.StreamResponse:
        name, version = request.match_info["name"], request.match_info["version"]
        if not NAME_PATTERN.fullmatch(name) or not VERSION_PATTERN.fullmatch(version):
            raise ApiError(404, "not_found", f"no model {name!r} {version!r}")
        if await ctx.store.model(name, version) is None:
            raise ApiError(404, "not_found", f"no model {name} {version}")
        path = await ctx.models.local_file(name, version)
        if path is None:
            raise ApiError(404, "not_found", f"model {name} {version} has no file on this hub")
        # FileResponse answers Range requests with 206: an interrupted download resumes.
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

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
            "/api/v1/models",
            "admin",
            upload,
            "Upload a model (multipart: model = the .tflite, manifest = model.json without "
            "sha256/size, sample = sample.json); the hub loads it, runs the sample, stores "
            "it and signs its release",
            "models",
            action="model.upload",
            response=UploadedOut,
            status=201,
            errors=(400, 409, 413, 422),
        ),
        Route(
            "GET",
            "/api/v1/models",
            "viewer",
            list_models,
            "List uploaded models",
            "models",
            response=params.Items[ModelOut],
        ),
        Route(
            "GET",
            "/api/v1/device/models/{name}/{version}/model.tflite",
            "device",
            download,
            "Download a model file (devices, with their certificate; Range requests resume)",
            "models",
            content_type="application/octet-stream",
            params=(
                Param("name", "path", "model name"),
                Param("version", "path", "model version"),
            ),
            errors=(404,),
        ),
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


async def _read_upload(
    request: web.Request, staging: Staging
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Stream the model part to disk; parse the two JSON parts. Returns the sha256 and
    the documents. Refuses missing, repeated or unknown parts."""
    reader = await request.multipart()
    docs: dict[str, dict[str, Any]] = {}
    sha256 = ""
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise bad_field("body", "nested multipart is not accepted")
        name = part.name or ""
        if name not in UPLOAD_PARTS:
            raise bad_field(f"body.{name}", f"unknown part; send {', '.join(UPLOAD_PARTS)}")
        if (name == "model" and sha256) or name in docs:
            raise bad_field(f"body.{name}", "sent twice")
        try:
            if name == "model":
                # Written from a thread: a slow disk must not stall the hub's loop.
                while chunk := await part.read_chunk(1 << 20):
                    await asyncio.to_thread(staging.write, chunk)
                sha256 = await asyncio.to_thread(staging.finish)
            else:
                docs[name] = await _json_part(part, name)
        except ModelRefusedError as exc:
            raise ApiError(413, "too_large", str(exc)) from exc
    for name in UPLOAD_PARTS:
        if (name == "model" and not sha256) or (name != "model" and name not in docs):
            raise bad_field(f"body.{name}", "missing part")
    return sha256, docs


async def _json_part(part: BodyPartReader, name: str) -> dict[str, Any]:
    raw = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        raw += chunk
        if len(raw) > MAX_SIDECAR_BYTES:
            raise ApiError(413, "too_large", f"{name}: over {MAX_SIDECAR_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad_field(f"body.{name}", f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise bad_field(f"body.{name}", "must be a JSON object")
    return value
