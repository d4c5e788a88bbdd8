"""Agent release routes: upload one (admin), list them (viewer), and the files a device
downloads to install one it was given (device certificate; resumable)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Annotated

from aiohttp import BodyPartReader, web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet.agentreleases import AgentReleaseExistsError
from hub.store import agentreleases as registry
from outpost import agentrelease
from outpost.agentrelease import ReleaseFileError
from outpost.schema import Struct

# A release is the outpost wheel and its dependencies' wheels for a few platforms: tens
# of MiB. The bound keeps one upload from filling the hub's disk.
MAX_UPLOAD_BYTES = 1 << 30
_VERSION = re.compile(r"[0-9]+(\.[0-9]+){1,3}[a-z0-9.+-]{0,32}")
_WHEEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.whl")


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

    @classmethod
    def of(cls, r: registry.StoredAgentRelease) -> AgentReleaseOut:
        m = json.loads(r.manifest)
        return cls(
            r.version,
            m["platforms"],
            len(m["files"]),
            sum(f["size"] for f in m["files"]),
            m["min_hub_version"],
            m["min_agent_version"],
            r.uploaded_at,
            r.uploaded_by,
        )


def routes(ctx: ApiContext) -> list[Route]:
    async def list_releases(request: web.Request) -> web.Response:
        found = await ctx.store.run(registry.all_releases)
        return params.answer(params.Items([AgentReleaseOut.of(r) for r in found]))

    async def upload(request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            raise bad_field(
                "body",
                "send multipart/form-data: a part `manifest` (manifest.json) and one part "
                "per file under files/, named `file` with its file name",
            )
        staging = await asyncio.to_thread(ctx.agents.staging)
        try:
            await params.multipart(_read_release(request, staging))
            try:
                # Staged once: the upload's folder is the shelf's, its files are moved.
                manifest = await ctx.agents.accept(
                    staging, by=request[PRINCIPAL].subject, staged=True
                )
            except AgentReleaseExistsError as exc:
                raise ApiError(409, "conflict", str(exc)) from exc
            except ReleaseFileError as exc:
                raise ApiError(422, "release_refused", str(exc)) from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        request[AUDIT_DETAIL] = {"agent_release": manifest.version}
        taken = await ctx.store.run(registry.all_releases)
        found = next(r for r in taken if r.version == manifest.version)
        return params.answer(AgentReleaseOut.of(found), status=201)

    async def download(request: web.Request) -> web.StreamResponse:
        version, name = request.match_info["version"], request.match_info["name"]
        if not _VERSION.fullmatch(version) or not _WHEEL.fullmatch(name):
            raise ApiError(404, "not_found", f"no agent release file {version!r} {name!r}")
        path = await ctx.agents.local_file(version, name)
        if path is None:
            raise ApiError(404, "not_found", f"agent release {version} has no file {name}")
        # FileResponse answers Range requests with 206: an interrupted download resumes.
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    return [
        Route(
            "GET",
            "/api/v1/agent-releases",
            "viewer",
            list_releases,
            "Agent releases the hub took and signed (outpost-hub agent-releases upload)",
            "fleet",
            response=params.Items[AgentReleaseOut],
        ),
        Route(
            "POST",
            "/api/v1/agent-releases",
            "admin",
            upload,
            "Upload an agent release made by scripts/build-agent-release: multipart parts "
            "`manifest` (its manifest.json) and `file` (each wheel under files/, with its "
            "file name). Every file is checked against the manifest; the hub signs it",
            "fleet",
            status=201,
            content_type="multipart/form-data",
            response=AgentReleaseOut,
            errors=(400, 409, 413, 422),
        ),
        Route(
            "GET",
            "/api/v1/device/agent-releases/{version}/{name}",
            "device",
            download,
            "A file of an agent release, for a device installing it (Range requests "
            "resume an interrupted download)",
            "fleet",
            content_type="application/octet-stream",
            params=(
                Param("version", "path", "the release's version"),
                Param("name", "path", "a wheel's file name, as its manifest names it"),
            ),
            errors=(404,),
        ),
    ]


async def _read_release(request: web.Request, staging: Path) -> None:
    """Stream the upload's parts into `staging` as a release folder; refuse unknown,
    repeated or missing parts and an upload over MAX_UPLOAD_BYTES."""
    files = staging / agentrelease.FILES
    await asyncio.to_thread(files.mkdir)
    reader = await request.multipart()
    total = 0
    seen: set[str] = set()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise bad_field("body", "nested multipart is not accepted")
        if part.name == "manifest":
            target = staging / agentrelease.MANIFEST
            label = "manifest"
        elif part.name == "file":
            label = part.filename or ""
            if not _WHEEL.fullmatch(label):
                raise bad_field("body.file", f"{label!r} is not a wheel's file name")
            target = files / label
        else:
            raise bad_field(f"body.{part.name}", "unknown part; send manifest and file parts")
        if label in seen:
            raise bad_field(f"body.{part.name}", f"{label} sent twice")
        seen.add(label)
        with await asyncio.to_thread(target.open, "wb") as out:
            while chunk := await part.read_chunk(1 << 20):
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise ApiError(413, "too_large", f"over {MAX_UPLOAD_BYTES:,} bytes")
                await asyncio.to_thread(out.write, chunk)
    if "manifest" not in seen:
        raise bad_field("body.manifest", "missing part")
