"""Shadow roll-outs end to end: a real hub, its broker and a real agent serving
vibration-anomaly 1.0.0 on the real interpreter. A candidate runs beside the live
version on every input (policy shadow.sample_share = 1), never serving; the device
reports the comparison in its metric roll-ups, and the hub judges it:

- a candidate identical to the live model (agreement 1.0) is promoted to a staged
  roll-out and ends up serving;
- a worse one (its classes shuffled: the model answers `looseness` where it means
  `bearing_fault`, as a model trained on shuffled labels would) is stopped with the
  figures, and the device keeps serving 1.0.0.

The live answers are the same, byte for byte in what they say, with a shadow running
and without.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from scripts.model_data import vibration_windows
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.local_api import LocalClient
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, eventually

VIBRATION = SHIPPED_MODELS[0]
MODEL = "vibration-anomaly"
SAMPLES = 60  # inputs compared before the hub judges (the roll-out's min_samples)


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_burst = 100000\n"


def _inputs(count: int) -> list[dict[str, Any]]:
    """Vibration windows of every class, quantized as the model's input wants."""
    manifest = json.loads((VIBRATION / "model.json").read_text())["input"]
    windows, _ = vibration_windows(count, np.random.default_rng(20261204))
    q = np.clip(np.round(windows / manifest["scale"]) + manifest["zero_point"], -128, 127)
    return [{"input": [w.astype(int).tolist()], "dtype": "int8"} for w in q]


INPUTS = _inputs(24)


async def _serving_shadow_ready(
    hub: Hub,
    api: ApiClient,
    admin: str,
    enroll_device: Enroller,
    agents: Callable[..., Any],
    disagreements: int = 0,
) -> tuple[DevicePaths, str]:
    """A device serving 1.0.0, its policy comparing every input once a shadow runs (and
    uploading `disagreements` of the inputs it disagreed on per roll-up), and reporting a
    roll-up every second."""
    paths, identity = await enroll_device("generic", {"site": "shadow"})
    ModelDirectory(paths.models).install(VIBRATION)
    shadow = {"sample_share": 1.0, "cpu_max_percent": 100, "disagreements": disagreements}
    layer = {
        "scope": "device",
        "device": identity.device_id,
        "document": {"metrics_interval": 1, "shadow": shadow},
    }
    reply = await api.call("PUT", "/api/v1/policy/layers/shadow", token=admin, body=layer)
    assert reply.status == 200, reply.body
    agents(paths)

    async def ready() -> bool:
        found = await api.call("GET", f"/api/v1/devices/{identity.device_id}/policy", token=admin)
        device = await hub.parts.store.device(identity.device_id)
        return bool(
            device
            and device.online
            and any(m["version"] == "1.0.0" and m["state"] == "ready" for m in device.models)
            and found.status == 200
            and found.body["version"] > 0
            and found.body["applied_version"] == found.body["version"]
        )

    await eventually(ready, timeout=30, what="the agent online with 1.0.0 and its policy")
    return paths, identity.device_id


async def _answers(client: LocalClient) -> list[tuple[str, list[float]]]:
    out = []
    for body in INPUTS:
        status, answer = await client.infer(MODEL, body)
        assert status == 200, answer
        out.append((answer["label"], answer["scores"]))
    return out


async def _candidate(hub: Hub, admin: str, version: str, *, shuffled: bool) -> None:
    model, manifest, sample = bundle_parts(VIBRATION, version=version)
    if shuffled:  # bearing_fault and looseness swapped: the sample says so too
        labels = manifest["labels"]
        i, j = labels.index("bearing_fault"), labels.index("looseness")
        labels[i], labels[j] = labels[j], labels[i]
        sample["expected"]["label"] = "looseness"
    reply = await upload(hub, admin, model, manifest, sample)
    assert reply.status == 201, reply.body


async def _shadow(api: ApiClient, admin: str, version: str) -> int:
    reply = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=admin,
        body={
            "model": MODEL,
            "version": version,
            "selector": {"site": "shadow"},
            "canary_share": 1.0,
            "mode": "shadow",
            # CPU time on both sides: the candidate's lowest priority does not count.
            "promote_if": {"agreement_min": 0.97, "latency_ratio_max": 1.5, "min_samples": SAMPLES},
        },
    )
    assert reply.status == 201, reply.body
    assert (reply.body["mode"], reply.body["state"]) == ("shadow", "shadow")
    assert {d["state"] for d in reply.body["devices"]} == {"shadowing"}
    return int(reply.body["id"])


async def _judged(
    api: ApiClient, admin: str, client: LocalClient, rollout_id: int
) -> dict[str, Any]:
    """Keep the device answering (each answer compared in shadow) until the hub judged."""

    async def decided() -> dict[str, Any]:
        reply = await api.call("GET", f"/api/v1/rollouts/{rollout_id}", token=admin)
        body: dict[str, Any] = reply.body
        if body["state"] != "shadow":
            return body
        await _answers(client)
        return {}

    return await eventually(decided, timeout=120, every=0.2, what="the shadow judged")


async def test_an_identical_candidate_is_promoted_and_live_answers_never_change(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    admin = await api.token("admin")
    paths, device_id = await _serving_shadow_ready(hub, api, admin, enroll_device, agents)
    client = LocalClient(paths.socket)
    try:
        before = await _answers(client)
        await _candidate(hub, admin, "1.1.0", shuffled=False)
        rollout_id = await _shadow(api, admin, "1.1.0")

        during = await _answers(client)
        judged = await _judged(api, admin, client, rollout_id)
        assert judged["state"] in ("canary", "rolling", "completed"), judged
        assert "promoted from shadow" in judged["reason"], judged
        shadow = judged["shadow"]
        assert shadow["samples"] >= SAMPLES
        assert shadow["agreement"] == 1.0
        assert all(k.split("|")[0] == k.split("|")[1] for k in shadow["confusion"])
        assert shadow["latency_basis"] == "cpu"
        print(f"identical candidate: CPU {shadow['latency_ratio']}x, "
              f"wall {shadow['wall_latency_ratio']}x")  # fmt: skip
        assert shadow["live"]["latency_mean_ms"] > 0
        assert shadow["candidate"]["latency_mean_ms"] > 0
        assert shadow["candidate"]["wall_mean_ms"] > 0

        async def serving_new() -> bool:
            device = await hub.parts.store.device(device_id)
            return bool(device and any(m["version"] == "1.1.0" for m in device.models))

        await eventually(serving_new, timeout=60, what="1.1.0 serving after the promotion")
    finally:
        await client.close()
    assert during == before  # the same labels and scores with the candidate in shadow


async def test_a_worse_candidate_is_stopped_and_never_serves(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
) -> None:
    admin = await api.token("admin")
    paths, device_id = await _serving_shadow_ready(
        hub, api, admin, enroll_device, agents, disagreements=3
    )
    client = LocalClient(paths.socket)
    try:
        before = await _answers(client)
        await _candidate(hub, admin, "1.2.0", shuffled=True)
        rollout_id = await _shadow(api, admin, "1.2.0")
        judged = await _judged(api, admin, client, rollout_id)
        after = await _answers(client)
    finally:
        await client.close()

    assert judged["state"] == "stopped", judged
    assert "agreement" in judged["reason"], judged
    assert "< 0.97" in judged["reason"], judged
    shadow = judged["shadow"]
    assert shadow["agreement"] < 0.97
    assert shadow["confusion"].get("bearing_fault|looseness", 0) > 0, shadow["confusion"]
    assert after == before
    device = await hub.parts.store.device(device_id)
    assert device is not None
    assert [m["version"] for m in device.models if m["name"] == MODEL] == ["1.0.0"]

    # The policy lets 3 disagreeing inputs per roll-up leave the device: they came as
    # events, each the input the two versions answered differently.
    found = await _events(api, admin, device_id, "shadow.disagreement")
    assert found, "no disagreement uploaded"
    for event in found:
        assert (event["live"], event["candidate"]) == ("1.0.0", "1.2.0")
        pair = (event["live_label"], event["candidate_label"])
        assert pair in (("bearing_fault", "looseness"), ("looseness", "bearing_fault")), pair
        assert {"input": event["input"], "dtype": "int8"} in INPUTS


async def _events(api: ApiClient, admin: str, device_id: str, name: str) -> list[dict[str, Any]]:
    reply = await api.call(
        "GET",
        f"/api/v1/devices/{device_id}/records",
        token=admin,
        params={"stream": "events", "limit": "500"},
    )
    assert reply.status == 200, reply.body
    return [r["body"] for r in reply.body["items"] if r["body"].get("event") == name]
