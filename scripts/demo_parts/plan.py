"""What the demo runs: its devices, their models and policy, and its timeline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AGENTS = [
    ("pump-station", "raspberry-pi-4", {"site": "north", "group": "pumps"}),
    ("camera-gate", "jetson-orin-nano", {"site": "north", "group": "cameras"}),
    ("line-3-gateway", "x86-gateway", {"site": "south", "group": "lines"}),
]
# With --courier: a site with no link at all, synced by bundle files the demo carries.
COURIER_AGENT = ("mine-shaft", "raspberry-pi-4", {"site": "deep", "group": "pumps"})
COURIER_EVERY_S = 15.0  # seconds between the courier's round trips
# The model each device's sensor program uses.
SENSOR_MODEL = {
    "mine-shaft": "vibration-anomaly",
    "pump-station": "vibration-anomaly",
    "camera-gate": "surface-defect",
    "line-3-gateway": "vibration-anomaly",
}
POLICY_LAYERS: dict[str, dict[str, Any]] = {
    "fleet": {
        "scope": "fleet",
        "document": {"metrics_interval": 10, "inference": {"confidence_below": 0.7}},
    },
    "cameras": {
        "scope": "group",
        "selector": {"group": "cameras"},
        # The cameras' flagged images travel with their results: the hub can explain them.
        "document": {"masking": {"hash": ["source"]}, "inference": {"flagged_inputs": True}},
    },
}
# A layer an operator mistypes: the hub refuses it whole, naming the field.
TYPO_DOCUMENT: dict[str, Any] = {"heartbeat_intervall": 5}
SHIPPED_MODELS = sorted(str(p.parent) for p in (REPO / "models").glob("*/*/model.json"))
HEARTBEAT_S = 2.0
ROLLOUT_AT_S = 4.0  # seconds into the fleet view when vibration-anomaly 1.1.0 rolls out
CUT_AT_S, CUT_FOR_S = 12.0, 15.0  # when the north site's link goes down, and for how long
