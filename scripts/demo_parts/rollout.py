"""The demo's model roll-out: a new version uploaded, then rolled out canary first."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.plan import REPO, ROLLOUT_AT_S
from scripts.demo_site import Background


class DemoRollout:
    """An admin uploads vibration-anomaly 1.1.0 (the shipped network under a new version)
    and rolls it out to every device, one canary first."""

    def __init__(self, api: HubApi, admin: str, background: Background) -> None:
        self._api = api
        self._admin = admin
        self._background = background
        self.id: int | None = None

    def start(self) -> str:
        folder = REPO / "models" / "vibration-anomaly" / "1.0.0"
        manifest = json.loads((folder / "model.json").read_text())
        manifest["version"] = "1.1.0"
        uploaded = self._background.run(
            upload_model(
                self._api,
                self._admin,
                (folder / "model.tflite").read_bytes(),
                manifest,
                (folder / "sample.json").read_bytes(),
            )
        )
        started = self._api.post(
            "/api/v1/rollouts",
            {"model": "vibration-anomaly", "version": "1.1.0", "canary_share": 0.3},
            self._admin,
        )
        self.id = int(started["id"])
        return (
            f"model vibration-anomaly 1.1.0 uploaded (POST /api/v1/models: the hub ran its "
            f"sample on {uploaded['checked_with']} and signed it); roll-out {self.id} to "
            "every device: one canary first, the rest once it runs the model"
        )

    def progress(self, names: dict[str, str]) -> str:
        if self.id is None:
            return f"model roll-out: vibration-anomaly 1.1.0 starts {ROLLOUT_AT_S:.0f} s in"
        try:
            r = json.loads(self._api.get(f"/api/v1/rollouts/{self.id}"))
        except (OSError, ValueError):
            return "model roll-out: (hub not answering)"
        each = ", ".join(
            f"{names.get(d['device'], d['device'])} {d['stage']} {d['state']}" for d in r["devices"]
        )
        reason = f" ({r['reason']})" if r["reason"] else ""
        return (
            f"model roll-out {r['id']} of {r['model']} {r['version']} "
            f"(GET /api/v1/rollouts/{r['id']}): {r['state']}{reason}: {each}"
        )


async def upload_model(
    api: HubApi, admin: str, model: bytes, manifest: dict[str, Any], sample: bytes
) -> Any:
    """POST /api/v1/models as an admin: a model file, its manifest and its sample."""
    form = aiohttp.FormData()
    form.add_field("model", model, filename="model.tflite")
    form.add_field("manifest", json.dumps(manifest), filename="model.json")
    form.add_field("sample", sample, filename="sample.json")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            api.url + "/api/v1/models",
            data=form,
            headers={"Authorization": f"Bearer {admin}"},
            ssl=api.context,
        ) as response,
    ):
        response.raise_for_status()
        return await response.json()
