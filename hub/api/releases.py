"""Model routes: upload a model (checked, stored, signed), list the models; and the
download devices make with their certificate. The roll-out routes, which release a model
to devices, are in rollouts.py; `routes` serves both.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from aiohttp import BodyPartReader, web
from msgspec import Meta

from hub.api import params, rollouts
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.models.releases import ModelExistsError, ModelRefusedError, Staging
from hub.store import StoredModel
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


def routes(ctx: ApiContext) -> list[Route]:
    """The model routes, then the roll-out routes: the API document lists them in this
    order, under `models`."""
    return [*_model_routes(ctx), *rollouts.routes(ctx)]


def _model_routes(ctx: ApiContext) -> list[Route]:
    async def upload(request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            raise bad_field(
                "body",
                "send multipart/form-data with parts model (the .tflite), manifest "
                "(model.json) and sample (sample.json)",
            )
        staging = await asyncio.to_thread(Staging, ctx.models.root, MAX_MODEL_BYTES)
        try:
            sha256, docs = await params.multipart(_read_upload(request, staging))
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
