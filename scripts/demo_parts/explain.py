"""The demo's explanation (`--explain`): the hub explains the camera gate's newest flagged
result from the input that travelled with it (the cameras' policy layer sets
inference.flagged_inputs), and writes the heat map over the image as a PNG beside the
demo's data, the picture the dashboard shows beside that result."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
from pathlib import Path
from typing import Any

import aiohttp

from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.plan import REPO
from scripts.demo_parts.rollout import upload_model
from scripts.demo_site import Background

DEVICE, MODEL = "camera-gate", "surface-defect"
FOUND_WITHIN_S = 60.0  # a flagged image with its input at the hub, after the fleet view
LOOKED_AT = 50  # the newest results read per look


class DemoExplain:
    def __init__(
        self, api: HubApi, admin: str, operator: str, background: Background, data: Path
    ) -> None:
        self._api = api
        self._admin = admin
        self._operator = operator
        self._background = background
        self._data = data

    def run(self) -> tuple[bool, list[str]]:
        """Explain the newest flagged image; (ok, the lines to print)."""
        self._hold_release()
        seq = self._newest_flagged()
        if seq is None:
            return False, [
                f"explanation: no flagged result of {DEVICE} carried its input within "
                f"{FOUND_WITHIN_S:.0f} s"
            ]
        try:
            answer = self._api.post(
                "/api/v1/explain", {"device": DEVICE, "seq": seq}, self._operator
            )
        except urllib.error.HTTPError as exc:
            return False, [f"explanation of {DEVICE} result {seq} refused: {exc.code} "
                           f"{json.loads(exc.read())['error']['message']}"]  # fmt: skip
        picture = self._data / f"explanation-{DEVICE}-{seq}.png"
        picture.write_bytes(base64.b64decode(answer["png"]))
        top = answer["top"]
        return True, [
            f"explained {DEVICE} result {seq} on the hub ({answer['model']} "
            f"{answer['version']}, the release that answered): {answer['label']} "
            f"({answer['score']:.2f}) rests most on the {top['size']} px patch at row "
            f"{top['row']}, column {top['col']} ({answer['calls']} model calls)",
            f"the heat map over the image: {picture} (the dashboard shows it beside the "
            "result: Devices, camera-gate, Recent results)",
        ]

    def _hold_release(self) -> None:
        """The hub explains with the release that answered: the camera's model came with
        its install, so the hub is given the same release, as an admin would upload it."""
        folder = REPO / "models" / MODEL / "1.0.0"
        try:
            self._background.run(
                upload_model(
                    self._api,
                    self._admin,
                    (folder / "model.tflite").read_bytes(),
                    json.loads((folder / "model.json").read_text()),
                    (folder / "sample.json").read_bytes(),
                )
            )
        except aiohttp.ClientResponseError as exc:
            if exc.status != 409:  # 409: the hub holds it already
                raise

    def _newest_flagged(self) -> int | None:
        """The seq of the camera gate's newest flagged result that carried its input."""
        deadline = time.monotonic() + FOUND_WITHIN_S
        while time.monotonic() < deadline:
            found = self._look()
            if found is not None:
                return found
            time.sleep(1)
        return None

    def _look(self) -> int | None:
        try:
            streams = json.loads(self._api.get(f"/api/v1/devices/{DEVICE}/streams"))
            hwm = next(s["hwm"] for s in streams["items"] if s["stream"] == "results")
            page = json.loads(
                self._api.get(
                    f"/api/v1/devices/{DEVICE}/records?stream=results"
                    f"&after={max(0, hwm - LOOKED_AT)}&limit={LOOKED_AT}"
                )
            )
        except (OSError, ValueError, StopIteration):
            return None
        items: list[dict[str, Any]] = page["items"]
        carried = [r for r in items if isinstance(r["body"], dict) and r["body"].get("input")]
        # A defect the model saw (flagged by its label) says more than a doubtful "ok".
        best = max(
            carried, key=lambda r: (r["body"].get("flag") == "label", r["seq"]), default=None
        )
        return int(best["seq"]) if best is not None else None
