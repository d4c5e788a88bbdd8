"""The demo's shadow roll-out (`--shadow`): a candidate surface-defect 1.1.0 (the shipped
network under a new version) runs beside the live 1.0.0 on the camera gate's real
inputs, never serving; the hub prints the comparison, live beside candidate, and
promotes it (or stops it) on the roll-out's criteria."""

from __future__ import annotations

import json
import time
from typing import Any

from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.plan import REPO
from scripts.demo_parts.rollout import upload_model
from scripts.demo_site import Background

MODEL, VERSION = "surface-defect", "1.1.0"
SAMPLES = 40  # inputs compared before the hub judges
RATIO_MAX = 1.2  # the candidate's CPU time per input over the live version's
JUDGED_WITHIN_S = 180.0


class DemoShadow:
    def __init__(self, api: HubApi, admin: str, background: Background) -> None:
        self._api = api
        self._admin = admin
        self._background = background

    def run(self) -> tuple[bool, list[str]]:
        """Upload the candidate, shadow it on the cameras, wait for the verdict; (ok,
        the lines to print)."""
        # Every input compared, and a roll-up every 2 s, so the demo needs seconds. And
        # whatever the machine's CPU: the demo's hub, broker and agents share it, and
        # past the default 80 % a device runs no shadow (a loaded test run compared one
        # input in three minutes).
        self._api.put(
            "/api/v1/policy/layers/cameras-shadow",
            {"scope": "group", "selector": {"group": "cameras"},
             "document": {"metrics_interval": 2,
                          "shadow": {"sample_share": 1.0, "cpu_max_percent": 100}}},
            self._admin,
        )  # fmt: skip
        folder = REPO / "models" / MODEL / "1.0.0"
        manifest = json.loads((folder / "model.json").read_text())
        manifest["version"] = VERSION
        self._background.run(
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
            {"model": MODEL, "version": VERSION, "selector": {"group": "cameras"},
             "mode": "shadow",
             # Judged on CPU time: the candidate's lowest CPU priority, which on a
             # loaded machine makes its wall time several times the live one's (a
             # clean-clone run: 3.25x), does not count.
             "promote_if": {"agreement_min": 0.97, "latency_ratio_max": RATIO_MAX,
                            "min_samples": SAMPLES}},
            self._admin,
        )  # fmt: skip
        lines = [
            f"shadow roll-out {started['id']}: {MODEL} {VERSION} runs beside the live 1.0.0 "
            f"on the camera gate's inputs, never serving; judged after {SAMPLES} samples "
            f"(agreement >= 0.97, latency ratio <= {RATIO_MAX:g} in CPU time)"
        ]
        deadline = time.monotonic() + JUDGED_WITHIN_S
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = json.loads(self._api.get(f"/api/v1/rollouts/{started['id']}"))
            if body["state"] != "shadow":
                break
            time.sleep(1)
        s = body.get("shadow") or {}
        if s:
            lines.append(
                f"shadow comparison over {s['samples']} inputs: agreement {s['agreement']}, "
                f"latency ratio {s['latency_ratio']} ({s.get('latency_basis', 'wall')} time: "
                f"live mean {s['live']['latency_mean_ms']} ms, candidate "
                f"{s['candidate']['latency_mean_ms']} ms; wall time "
                f"{s.get('wall_latency_ratio')})"
            )
        promoted = body.get("state") in ("canary", "rolling", "completed")
        lines.append(
            f"shadow roll-out {started['id']}: {body.get('state', 'not judged')}"
            + (f" ({body['reason']})" if body.get("reason") else "")
        )
        return promoted, lines
