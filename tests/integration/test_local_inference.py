"""Local inference through a real agent's local API: the shipped models on LiteRT, bad
requests refused with reasons, a broken model isolated, and results recorded offline
reaching the hub once its broker returns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from outpost.modelbundle import Sample, read_bundle
from tests.conftest import Enroller
from tests.integration.test_store_forward import hub_records, wait_socket, write_agent_settings
from tests.local_api import LocalClient
from tests.support import SHIPPED_MODELS, AgentProcess, eventually

VIBRATION, SURFACE = "vibration-anomaly", "surface-defect"


def sample_of(folder: Path) -> Sample:
    sample = read_bundle(folder).sample
    assert sample is not None
    return sample


def real_values(folder: Path) -> np.ndarray:
    """The sample as real-world values: what a sensor program would send."""
    bundle = read_bundle(folder)
    assert bundle.sample is not None
    spec = bundle.manifest.input
    return (np.array(bundle.sample.input, np.float32) - spec.zero_point) * spec.scale


def assert_expected(answer: dict[str, Any], folder: Path) -> None:
    sample = sample_of(folder)
    manifest = read_bundle(folder).manifest
    assert answer["model"] == manifest.name
    assert answer["version"] == manifest.version
    assert answer["label"] == sample.expected.label
    assert list(answer["scores"]) == manifest.labels
    got = np.array(list(answer["scores"].values()))
    assert np.abs(got - sample.expected.scores).max() <= manifest.output.scale * 1.01
    assert answer["confidence"] == pytest.approx(max(answer["scores"].values()))
    assert answer["latency_ms"] > 0


async def start_agent(
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    settings: str = "",
    prepare: Callable[[DevicePaths], None] | None = None,
) -> tuple[DevicePaths, str, AgentProcess, LocalClient]:
    paths, identity = await enroll_device()
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    if prepare is not None:
        prepare(paths)
    write_agent_settings(paths, settings)
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    return paths, identity.device_id, agent, client


async def test_each_model_answers_its_sample_in_json_and_msgpack(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    _, device_id, _, client = await start_agent(enroll_device, agents)
    try:
        for folder in SHIPPED_MODELS:
            name = folder.parent.name
            status, answer = await client.infer(
                name, {"input": sample_of(folder).input, "dtype": "int8"}
            )
            assert status == 200, answer
            assert_expected(answer, folder)

            # msgpack with the real values as raw float32 bytes, the compact form.
            values = real_values(folder).astype("<f4").tobytes()
            status, answer = await client.infer_msgpack(name, {"input": values})
            assert status == 200, answer
            assert_expected(answer, folder)

        listed = await client.models()
        assert listed["runtime"].startswith("ai-edge-litert")
        assert [(m["name"], m["state"]) for m in listed["models"]] == [
            (SURFACE, "ready"),
            (VIBRATION, "ready"),
        ]
        assert listed["models"][0]["served"] == 2
        status_page = await client.status()
        assert status_page["models"] == {SURFACE: "ready", VIBRATION: "ready"}
        assert "policy_version" in status_page  # its value: see test_policy.py
        assert status_page["uptime_s"] > 0

        # hello told the hub what the device can run.
        async def reported() -> Any:
            device = await hub.parts.store.device(device_id)
            return device is not None and len(device.models) == 2 and device

        device = await eventually(reported, timeout=10, what="the models in the registry")
        assert device.runtime.startswith("ai-edge-litert")
        assert {(m["name"], m["version"], m["state"]) for m in device.models} == {
            (SURFACE, "1.0.0", "ready"),
            (VIBRATION, "1.0.0", "ready"),
        }
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("model", "body", "status", "code", "words"),
    [
        (VIBRATION, {"input": [[0.0] * 3] * 127}, 400, "bad_shape", "[127, 3] does not match"),
        (VIBRATION, {"input": [[0.0] * 3] * 128, "dtype": "float64"}, 400, "bad_dtype", "float64"),
        (VIBRATION, {"input": [["x"] * 3] * 128}, 400, "bad_dtype", "non-numeric"),
        (VIBRATION, {"input": [[300] * 3] * 128, "dtype": "int8"}, 400, "bad_dtype", "-128..127"),
        (VIBRATION, {"inputs": []}, 400, "bad_field", "body.inputs: unknown key"),
        (VIBRATION, {"dtype": "int8"}, 400, "bad_field", "body.input is required"),
        ("no-such-model", {"input": []}, 404, "unknown_model", "installed: surface-defect, vib"),
        (SURFACE, {"input": [[[0.5]] * 96] * 96 * 2}, 413, "too_large", "limit of 65536"),
        (VIBRATION, {"input": [[2**70] * 3] * 128}, 400, "bad_dtype", "non-numeric"),
        (VIBRATION, {"input": [[0] * 3] * 128, "context": {"n": 2**70}}, 400, "bad_field", "4096"),
    ],
)
async def test_a_bad_request_gets_a_4xx_naming_the_problem(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    model: str,
    body: dict[str, Any],
    status: int,
    code: str,
    words: str,
) -> None:
    _, _, agent, client = await start_agent(
        enroll_device, agents, "[agent.inference]\nmax_body_bytes = 65536\n"
    )
    try:
        got, answer = await client.infer(model, body)
        assert (got, answer["error"]["code"]) == (status, code), answer
        assert words in answer["error"]["message"]

        got, answer = await client.post_raw(f"/v1/infer/{VIBRATION}", b"<x/>", "text/xml")
        assert (got, answer["error"]["code"]) == (415, "unsupported_media_type")
        deep = b"[" * 20_000 + b"]" * 20_000
        got, answer = await client.post_raw(f"/v1/infer/{VIBRATION}", deep, "application/json")
        assert (got, answer["error"]["code"]) == (400, "bad_body")
        got, answer = await client.append("results", [{"kind": "task", "task_id": "tsk-x"}])
        assert (got, answer["error"]["code"]) == (400, "bad_field")
        assert "reserved" in answer["error"]["message"]

        # The agent still serves a good request afterwards.
        got, answer = await client.infer(
            SURFACE, {"input": sample_of(SHIPPED_MODELS[1]).input, "dtype": "int8"}
        )
        assert got == 200, answer
        assert agent.process.poll() is None
    finally:
        await client.close()


async def test_a_msgpack_tensor_body_is_checked_as_strictly_as_any_other(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """A msgpack body whose input is bytes takes a shorter path (decoded on the event
    loop, whatever its size); every refusal of the general path still applies to it."""
    _, _, agent, client = await start_agent(enroll_device, agents)
    vibration = SHIPPED_MODELS[0]
    assert vibration.parent.name == VIBRATION
    values = real_values(vibration).astype("<f4").tobytes()
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"input": values[:-4]}, "bad_shape", f"{len(values) - 4} bytes"),
        ({"input": values, "dtype": "float64"}, "bad_dtype", "float64"),
        ({"input": values, "dtype": 8}, "bad_dtype", "must be a string"),
        ({"input": values, "inputs": 1}, "bad_field", "body.inputs: unknown key"),
        ({"input": values, "context": {"n": "x" * 5000}}, "bad_field", "4096"),
        ({"input": values, "context": [1]}, "bad_field", "4096"),
        ({"dtype": "float32"}, "bad_field", "body.input is required"),
    ]
    try:
        for body, code, words in cases:
            got, answer = await client.infer_msgpack(VIBRATION, body)
            assert (got, answer["error"]["code"]) == (400, code), (body.keys(), answer)
            assert words in answer["error"]["message"], answer

        # The same body, well formed, is answered.
        got, answer = await client.infer_msgpack(
            VIBRATION, {"input": values, "context": {"line": 2}}
        )
        assert got == 200, answer
        assert_expected(answer, vibration)
        assert agent.process.poll() is None
    finally:
        await client.close()


def truncate_vibration_model(paths: DevicePaths) -> None:
    model = paths.models / VIBRATION / "1.0.0" / "model.tflite"
    model.write_bytes(model.read_bytes()[:1000])


async def test_a_corrupt_model_fails_alone_and_the_rest_keeps_serving(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    _, device_id, agent, client = await start_agent(
        enroll_device, agents, prepare=truncate_vibration_model
    )
    try:
        status, answer = await client.infer(
            VIBRATION, {"input": sample_of(SHIPPED_MODELS[0]).input, "dtype": "int8"}
        )
        assert status == 503, answer
        assert answer["error"]["code"] == "model_unavailable"
        assert "1000 bytes, the manifest says" in answer["error"]["message"]

        status, answer = await client.infer(
            SURFACE, {"input": sample_of(SHIPPED_MODELS[1]).input, "dtype": "int8"}
        )
        assert status == 200, answer
        assert_expected(answer, SHIPPED_MODELS[1])

        states = {m["name"]: (m["state"], m["error"]) for m in (await client.models())["models"]}
        assert states[SURFACE] == ("ready", None)
        assert states[VIBRATION][0] == "failed"
        assert "truncated or replaced" in states[VIBRATION][1]

        async def reported() -> Any:
            device = await hub.parts.store.device(device_id)
            return device is not None and {m["name"]: m["state"] for m in device.models}

        assert await eventually(reported, timeout=10, what="model states at the hub") == {
            SURFACE: "ready",
            VIBRATION: "failed",
        }
        assert agent.process.poll() is None
    finally:
        await client.close()


async def test_inference_works_offline_and_its_flagged_results_reach_the_hub_later(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    assert hub.parts.broker is not None
    await hub.parts.broker.stop()  # the site's link is down before the agent even starts
    _, device_id, _, client = await start_agent(
        enroll_device, agents, '[agent.inference]\nreport = "flagged"\nconfidence_below = 0.6\n'
    )
    fault = sample_of(SHIPPED_MODELS[0]).input  # bearing_fault: flagged by its label
    quiet = [[[0.0, 0.0, 0.0]] * 128]  # a still machine: normal, confidently
    try:
        assert (await client.status())["connection"] != "connected"
        recorded = []
        for n in range(6):
            body = {"input": fault, "dtype": "int8", "context": {"sensor": "pump-1", "n": n}}
            status, answer = await client.infer(VIBRATION, body)
            assert status == 200, answer
            assert answer["label"] == "bearing_fault"
            recorded.append(answer["recorded"]["seq"])
            status, answer = await client.infer(VIBRATION, {"input": quiet})
            assert status == 200, answer
            assert (answer["label"], answer["recorded"]) == ("normal", None)
        assert recorded == list(range(recorded[0], recorded[0] + 6))
        assert hub_records(hub, device_id) == []

        await hub.parts.broker.start()  # the link returns

        async def six() -> list[Any]:
            found = [b for _, b in hub_records(hub, device_id) if b.get("kind") == "inference"]
            return found if len(found) >= 6 else []

        held = await eventually(six, timeout=30, every=0.2, what="6 inference results at the hub")
        assert [b["context"]["n"] for b in held] == list(range(6))
        assert {(b["model"], b["version"], b["label"], b["flag"]) for b in held} == {
            (VIBRATION, "1.0.0", "bearing_fault", "label")
        }
    finally:
        await client.close()


async def test_without_a_usable_runtime_the_agent_runs_and_says_what_to_install(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    # This venv has LiteRT only; insisting on tflite-runtime leaves no usable runtime.
    _, device_id, agent, client = await start_agent(
        enroll_device, agents, '[agent.inference]\nruntime = "tflite-runtime"\n'
    )
    try:
        status, answer = await client.infer(VIBRATION, {"input": [[0.0] * 3] * 128})
        assert status == 503, answer
        assert "no inference runtime: install tflite-runtime" in answer["error"]["message"]
        listed = await client.models()
        assert listed["runtime"] == "none"
        assert {m["state"] for m in listed["models"]} == {"failed"}

        # Records still flow: the agent is up for everything but inference.
        status, _ = await client.append("results", [{"n": 1}])
        assert status == 201

        async def reported() -> Any:
            device = await hub.parts.store.device(device_id)
            return device is not None and device.runtime == "none" and device

        await eventually(reported, timeout=10, what="runtime none at the hub")
        assert agent.process.poll() is None
    finally:
        await client.close()


async def test_an_unknown_path_or_method_gets_the_json_error_shape(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, _, _, client = await start_agent(enroll_device, agents)
    await client.close()
    connector = aiohttp.UnixConnector(path=str(paths.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        answers = {}
        for method, path in [
            ("GET", "/v1/nothing"),
            ("POST", "/"),
            ("GET", f"/v1/infer/{VIBRATION}"),
            ("DELETE", "/v1/status"),
        ]:
            async with session.request(method, f"http://agent{path}") as response:
                body = await response.json()  # fails on aiohttp's own text answer
                answers[method, path] = (response.status, body, response.headers.get("Allow"))

    for _, body, _ in answers.values():
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "details"}
    status, body, _ = answers["GET", "/v1/nothing"]
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert "no such path: /v1/nothing; paths: GET /v1/models" in body["error"]["message"]
    assert "POST /v1/infer/{model}" in body["error"]["message"]
    assert answers["POST", "/"][0] == 404
    status, body, allow = answers["GET", f"/v1/infer/{VIBRATION}"]
    assert (status, body["error"]["code"], allow) == (405, "method_not_allowed", "POST")
    assert body["error"]["message"] == f"GET is not allowed on /v1/infer/{VIBRATION}; use POST"
    status, body, allow = answers["DELETE", "/v1/status"]
    assert (status, allow) == (405, "GET, HEAD")


async def test_the_agent_logs_the_runtime_s_line_as_a_record_not_raw(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    _, _, agent, client = await start_agent(enroll_device, agents)
    try:
        listed = await client.models()
        assert {m["state"] for m in listed["models"]} == {"ready"}  # interpreters made
    finally:
        await client.close()

    output = agent.output()
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" not in output
    whole = output[: output.rfind("\n")]  # a last line may still be being written
    events = [json.loads(line) for line in whole.splitlines()]  # every line a record
    said = [e for e in events if "XNNPACK" in e["msg"]]
    assert [(e["level"], e["logger"]) for e in said] == [("debug", "edge.inference.runtime_log")]
