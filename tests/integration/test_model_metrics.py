"""Metric roll-ups end to end: agents count their inferences and errors, the roll-ups
travel by store and forward, the hub folds them into model statistics, drift and
`/metrics` fleet aggregates."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edge.rollup import Tally
from edge.store import AgentStore, Bounds
from hub.app import Hub
from hub.store import Upload
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_local_inference import sample_of, start_agent
from tests.integration.test_metrics import _scrape
from tests.integration.test_store_forward import hub_records
from tests.support import SHIPPED_MODELS, AgentProcess, add_device, eventually

VIBRATION = "vibration-anomaly"


@pytest.fixture
def hub_settings() -> str:
    # These tests poll /metrics; the per-subject rate limit is not what they are about.
    return "api_rate_burst = 100000\n"


def rollups_at_hub(hub: Hub, device_id: str) -> list[tuple[int, dict[str, Any]]]:
    return [
        (seq, body)
        for seq, body in hub_records(hub, device_id, "metrics")
        if body.get("kind") == "rollup"
    ]


def inferred(rollups: list[tuple[int, dict[str, Any]]], key: str) -> int:
    return sum(body["models"].get(key, {}).get("count", 0) for _, body in rollups)


async def test_inferences_reach_metrics_and_drift_through_roll_ups(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    _, device_id, _, client = await start_agent(enroll_device, agents, "metrics_interval = 0.3\n")
    token = await api.token("viewer")
    fault = sample_of(SHIPPED_MODELS[0]).input
    try:
        for _ in range(20):
            status, answer = await client.infer(VIBRATION, {"input": fault, "dtype": "int8"})
            assert status == 200, answer
        status, _ = await client.infer(VIBRATION, {"input": [[1.0, 2.0]]})
        assert status == 400  # a wrong shape: counted as bad_input

        model = (("model", VIBRATION),)

        async def counted() -> dict[Any, float]:
            samples = await _scrape(api, token)
            done = samples.get(("outpost_hub_inferences_total", model)) == 20
            errors = samples.get(("outpost_hub_device_errors_total", (("reason", "bad_input"),)))
            return samples if done and errors == 1 else {}

        samples = await eventually(counted, timeout=20, every=0.2, what="20 inferences counted")
    finally:
        await client.close()

    assert samples[("outpost_hub_inference_latency_seconds_count", model)] == 20
    assert samples[("outpost_hub_inference_latency_seconds_bucket", (("le", "+Inf"), *model))] == 20
    assert samples[("outpost_hub_inference_latency_seconds_sum", model)] > 0
    # The sample is a bearing fault the model is sure of: every answer in the top bin.
    assert samples[("outpost_hub_inference_confidence_bucket", (("le", "0.9"), *model))] == 0
    assert samples[("outpost_hub_inference_confidence_bucket", (("le", "1.0"), *model))] == 20
    assert samples[("outpost_hub_device_errors_total", (("reason", "busy"),))] == 0
    for stream in ("results", "events", "metrics"):
        assert samples[("outpost_hub_devices_store_over_80", (("stream", stream),))] == 0
    for within in ("1d", "14d"):
        assert samples[("outpost_hub_certificates_expiring", (("within", within),))] == 0
    assert samples[("outpost_hub_devices_revoked", ())] == 0
    for state in ("canary", "rolling", "completed", "halted", "superseded"):
        assert samples[("outpost_hub_rollouts", (("state", state),))] == 0
    assert samples[("outpost_hub_model_drift_devices", model)] == 0

    rollups = rollups_at_hub(hub, device_id)
    assert inferred(rollups, f"{VIBRATION}@1.0.0") == 20
    _, last = rollups[-1]
    assert set(last) == {"kind", "period_s", "load", "store", "tasks", "errors", "models"}
    assert 0 <= last["store"]["metrics"]["fill"] < 1
    labelled = [b["models"][f"{VIBRATION}@1.0.0"] for _, b in rollups if b["models"]]
    assert sum(m["labels"].get("bearing_fault", 0) for m in labelled) == 20

    reply = await api.call("GET", "/api/v1/drift", token=token)
    assert reply.status == 200, reply.body
    (version,) = [i for i in reply.body["items"] if i["model"] == VIBRATION]
    assert version["version"] == "1.0.0"
    assert version["devices"] == [
        {
            "device_id": device_id,
            "count": 20,
            "psi_labels": None,  # alone in the fleet: nothing to compare with
            "psi_confidence": None,
            "level": "insufficient",
            "flagged": False,
        }
    ]
    reply = await api.call("GET", f"/api/v1/devices/{device_id}/drift", token=token)
    assert reply.status == 200
    assert reply.body["flagged"] is False
    assert [(m["model"], m["version"]) for m in reply.body["models"]] == [(VIBRATION, "1.0.0")]


async def test_roll_ups_written_offline_arrive_later_in_order(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    assert hub.parts.broker is not None
    await hub.parts.broker.stop()  # the site's link is down
    _, device_id, _, client = await start_agent(enroll_device, agents, "metrics_interval = 0.3\n")
    fault = sample_of(SHIPPED_MODELS[0]).input
    try:
        for _ in range(7):
            status, answer = await client.infer(VIBRATION, {"input": fault, "dtype": "int8"})
            assert status == 200, answer

        async def rolled_up() -> bool:
            fill = (await client.status())["store"]["streams"]["metrics"]
            return bool(fill["records"] >= 3)  # the inferences' roll-up and later ones

        await eventually(rolled_up, timeout=10, what="roll-ups kept while offline")
        assert rollups_at_hub(hub, device_id) == []

        await hub.parts.broker.start()  # the link returns

        async def arrived() -> list[tuple[int, dict[str, Any]]]:
            found = rollups_at_hub(hub, device_id)
            return found if inferred(found, f"{VIBRATION}@1.0.0") == 7 else []

        held = await eventually(arrived, timeout=30, every=0.2, what="the roll-ups at the hub")
    finally:
        await client.close()
    seqs = [seq for seq, _ in held]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    token = await api.token("viewer")
    samples = await _scrape(api, token)
    assert samples[("outpost_hub_inferences_total", (("model", VIBRATION),))] == 7


def rollup_body(
    *,
    model: str = "m@1",
    count: int = 100,
    labels: dict[str, int] | None = None,
    confidence: list[int] | None = None,
    fill: float = 0.1,
) -> bytes:
    packed: bytes = msgpack.packb(
        {
            "kind": "rollup",
            "period_s": 60.0,
            "load": {"cpu_percent": 1.0},
            "store": {"results": {"records": 1, "bytes": 10, "fill": fill}},
            "tasks": {"done": 0, "failed": 0, "queued": 0, "running": 0},
            "errors": {"busy": 2},
            "models": {
                model: {
                    "count": count,
                    "latency_ms": {"1": count},
                    "latency_sum_ms": float(count),
                    "confidence": confidence or [0] * 8 + [count // 5, count - count // 5],
                    "labels": labels or {"ok": count * 9 // 10, "crack": count // 10},
                }
            },
        }
    )
    return packed


async def test_a_drifting_device_is_flagged_against_the_fleet(hub: Hub, api: ApiClient) -> None:
    now = time.time()
    fleet = [f"dev-{n}" for n in range(5)]
    for device_id in [*fleet, "odd"]:
        await add_device(hub, device_id)
    uploads = [Upload(d, "metrics", 1, 1, [(1, now, rollup_body())]) for d in fleet]
    # The odd one out sees cracks half the time, and is less sure; its store fills up.
    odd = rollup_body(
        labels={"ok": 50, "crack": 50}, confidence=[0] * 5 + [50, 0, 0, 0, 50], fill=0.9
    )
    uploads.append(Upload("odd", "metrics", 1, 1, [(1, now, odd)]))
    outcome = await hub.parts.store.apply_uploads(uploads, now=now)
    assert outcome.rollups.rollups == 6
    assert outcome.rollups.models["m"].count == 600
    assert outcome.rollups.errors == {"busy": 12}

    again = await hub.parts.store.apply_uploads(uploads, now=now)  # a resend: stored once
    assert again.rollups.rollups == 0

    token = await api.token("viewer")
    reply = await api.call("GET", "/api/v1/drift", token=token)
    assert reply.status == 200, reply.body
    (version,) = reply.body["items"]
    assert (version["model"], version["version"], version["flagged"]) == ("m", "1", ["odd"])
    by_id = {d["device_id"]: d for d in version["devices"]}
    assert by_id["odd"]["psi_labels"] >= 0.25
    assert by_id["odd"]["level"] == "drift"
    assert by_id["dev-0"]["level"] == "stable"
    assert by_id["dev-0"]["count"] == 100

    reply = await api.call("GET", "/api/v1/devices/odd/drift", token=token)
    assert reply.status == 200
    assert reply.body["flagged"] is True
    reply = await api.call("GET", "/api/v1/devices/nobody/drift", token=token)
    assert reply.status == 404

    samples = await _scrape(api, token)
    assert samples[("outpost_hub_model_drift_devices", (("model", "m"),))] == 1
    assert samples[("outpost_hub_model_psi_max", (("model", "m"),))] >= 0.25
    assert samples[("outpost_hub_devices_store_over_80", (("stream", "results"),))] == 1
    # add_device gives certificates that expired long ago: each counts as expiring.
    assert samples[("outpost_hub_certificates_expiring", (("within", "14d"),))] == 6


async def test_a_full_metrics_stream_merges_roll_ups_keeping_their_counts(
    tmp_path: Path,
) -> None:
    unbounded = Bounds(0, 0, 0)
    store = AgentStore(
        tmp_path / "store.db",
        {"results": unbounded, "events": unbounded, "metrics": Bounds(20, 0, 0)},
    )
    await store.start()
    try:
        for _ in range(20):
            tally = Tally()
            tally.inference("m", "1", "ok", 0.95, 0.3)
            models, _ = tally.take()
            body = {"kind": "rollup", "period_s": 1.0, "errors": {"busy": 1}, "models": models}
            await store.append("metrics", [body])
        await store.append("metrics", [{"kind": "rollup", "period_s": 1.0, "models": {}}])
        stats = await store.stats()
        rows = await store.batch("metrics", 0, max_records=1000, max_bytes=1 << 22)
    finally:
        await store.close()

    assert stats["counters"]["rolled_up.metrics"] == 10
    assert stats["streams"]["metrics"]["fill"] == pytest.approx(
        12 / 20
    )  # 10 merged into 1, 10 kept, 1 new
    merged = rows[0][2]
    assert merged["kind"] == "rollup"
    assert merged["period_s"] == 10.0
    assert merged["models"]["m@1"]["count"] == 10
    assert merged["errors"] == {"busy": 10}
    assert sum(body["models"].get("m@1", {}).get("count", 0) for _, _, body in rows) == 20
