"""Upload a model bundle to the hub's API in tests, optionally as a new version or with
its manifest or sample changed."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub
from tests.api_client import Reply


def bundle_parts(
    folder: Path,
    *,
    version: str | None = None,
    manifest: dict[str, Any] | None = None,
    sample: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """The model bytes, manifest and sample of a shipped bundle, as an upload sends them."""
    model = (folder / "model.tflite").read_bytes()
    meta = json.loads((folder / "model.json").read_text())
    if version is not None:
        meta["version"] = version
    meta.update(manifest or {})
    samp = json.loads((folder / "sample.json").read_text())
    samp.update(sample or {})
    return model, meta, samp


async def upload(
    hub: Hub,
    token: str,
    model: bytes | None,
    manifest: dict[str, Any] | None,
    sample: dict[str, Any] | None,
) -> Reply:
    """POST /api/v1/models as multipart; a part given as None is left out."""
    form = aiohttp.FormData()
    if model is not None:
        form.add_field("model", model, filename="model.tflite")
    if manifest is not None:
        form.add_field("manifest", json.dumps(manifest), filename="model.json")
    if sample is not None:
        form.add_field("sample", json.dumps(sample), filename="sample.json")
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            hub.config.hub_url + "/api/v1/models",
            data=form,
            headers={"Authorization": f"Bearer {token}"},
            ssl=context,
        ) as response,
    ):
        text = await response.text()
        try:
            body: Any = json.loads(text)
        except json.JSONDecodeError:
            body = text
        return Reply(response.status, body, dict(response.headers))
