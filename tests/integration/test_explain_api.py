"""`POST /v1/explain/{model}` on a real agent's local API, on the real interpreter: an
image's top patch lies on its defect, a vibration window's shares cover its axes, and
mistakes are refused by name (a request over its budget beside the same one within it)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from edge.inference.directory import ModelDirectory
from hub.app import Hub
from scripts.model_data import vibration_windows
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_explain_accuracy import _surface
from tests.local_api import LocalClient
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, eventually


@pytest.fixture
async def client(
    enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> AsyncIterator[LocalClient]:
    paths, _ = await enroll_device()
    for model in SHIPPED_MODELS:
        ModelDirectory(paths.models).install(model)
    agents(paths)
    local = LocalClient(paths.socket)

    async def ready() -> bool:
        try:
            found = await local.models()
        except OSError:
            return False
        return all(m["state"] == "ready" for m in found["models"]) and len(found["models"]) == 2

    await eventually(ready, timeout=30, what="both models loaded")
    yield local
    await local.close()


async def _explain(client: LocalClient, model: str, body: dict[str, Any]) -> tuple[int, Any]:
    return await client.post_raw(
        f"/v1/explain/{model}", json.dumps(body).encode(), "application/json"
    )


async def test_an_image_explained_points_at_its_defect(client: LocalClient) -> None:
    image, mask = _surface(np.random.default_rng(7), "spot")
    body = {"input": image[None].tolist(), "patch": 16, "stride": 8, "target": "spot"}

    over, refused = await _explain(client, "surface-defect", {**body, "budget": 100})
    status, answer = await _explain(client, "surface-defect", {**body, "budget": 400})

    assert over == 422, refused
    assert "needs 243 model calls, over the budget of 100" in refused["error"]["message"]
    assert status == 200, answer
    assert (answer["label"], answer["method"], answer["calls"]) == ("spot", "occlusion", 243)
    top = answer["top"]
    assert mask[top["row"] : top["row"] + 16, top["col"] : top["col"] + 16].any()
    assert np.array(answer["attribution"]).shape == (11, 11)


async def test_a_window_explained_shares_out_its_axes(client: LocalClient) -> None:
    windows, labels = vibration_windows(20, np.random.default_rng(3))
    window = windows[int(np.argmax(labels == 3))]  # a bearing fault, as the model learnt it
    status, answer = await _explain(client, "vibration-anomaly", {"input": [window.tolist()]})
    assert status == 200, answer
    assert (answer["method"], answer["label"]) == ("occlusion", "bearing_fault")
    assert sum(answer["channels"]) == pytest.approx(1.0)
    assert np.array(answer["attribution"]).shape == (8, 3)


async def test_mistakes_are_refused_by_name(client: LocalClient) -> None:
    window = [np.zeros((128, 3)).tolist()]
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("vibration-anomaly", {"input": window, "windw": 8}, 400, "body.windw: unknown key"),
        ("vibration-anomaly", {"input": window, "window": 0}, 400, "body.window must be"),
        ("vibration-anomaly", {"input": window, "target": "nope"}, 400, "body.target"),
        ("vibration-anomaly", {"input": window, "method": "kernelshap"}, 400, "body.method"),
        ("vibration-anomaly", {"window": 8}, 400, "body.input is required"),
        ("vibration-anomaly", {"input": [[1, 2]]}, 400, "vibration-anomaly:"),
        ("nope", {"input": window}, 404, "no model 'nope'"),
    ]
    for model, body, want, says in cases:
        status, answer = await _explain(client, model, body)
        assert (status, says in answer["error"]["message"]) == (want, True), (body, answer)
    status, answer = await _explain(client, "vibration-anomaly", {"input": window, "window": 8})
    assert status == 200, answer


async def test_the_hub_explains_with_the_same_release_and_draws_the_heat_map(
    hub: Hub, api: ApiClient
) -> None:
    model, manifest, sample = bundle_parts(SHIPPED_MODELS[1])
    assert (await upload(hub, await api.token("admin"), model, manifest, sample)).status == 201
    image, mask = _surface(np.random.default_rng(7), "spot")
    body = {"model": "surface-defect", "input": image[None].tolist(), "patch": 16, "stride": 8}
    operator = await api.token("operator")

    viewer = await api.call("POST", "/api/v1/explain", token=await api.token("viewer"), body=body)
    anonymous = await api.call("POST", "/api/v1/explain", body=body)
    over = await api.call("POST", "/api/v1/explain", token=operator, body={**body, "budget": 50})
    typo = await api.call("POST", "/api/v1/explain", token=operator, body={**body, "patc": 8})
    unknown = await api.call("POST", "/api/v1/explain", token=operator, body={**body, "model": "x"})
    reply = await api.call("POST", "/api/v1/explain", token=operator, body=body)

    assert (viewer.status, anonymous.status) == (403, 401)
    assert over.status == 422
    assert "over the budget of 50" in over.body["error"]["message"]
    assert typo.status == 400
    assert typo.body["error"]["details"]["field"] == "body.patc"
    assert unknown.status == 404
    assert reply.status == 200, reply.body
    answer = reply.body
    assert (answer["version"], answer["label"]) == ("1.0.0", "spot")
    top = answer["top"]
    assert mask[top["row"] : top["row"] + 16, top["col"] : top["col"] + 16].any()
    png = base64.b64decode(answer["png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (96, 96)  # IHDR: the image's size

    # The same image as the tensor's bytes (float32, C order), as a task's input may be.
    tensor = np.asarray(image[None], "<f4").tobytes()
    as_bytes = {key: value for key, value in body.items() if key != "input"}
    same = await api.call(
        "POST", "/api/v1/explain", token=operator,
        body={**as_bytes, "input_b64": base64.b64encode(tensor).decode()},
    )  # fmt: skip
    assert same.status == 200, same.body
    assert same.body["attribution"] == answer["attribution"]
    assert same.body["png"] == answer["png"]
    for wrong, said in (
        ({"input_b64": "AAAA!"}, "input_b64 is not base64"),
        ({"input_b64": base64.b64encode(tensor[:-4]).decode()}, "surface-defect: input is"),
        ({"input_b64": "AAAA", "input": [[1]]}, "not both"),
    ):
        refused = await api.call(
            "POST", "/api/v1/explain", token=operator, body={**as_bytes, **wrong}
        )
        assert refused.status == 400, refused.body
        assert said in refused.body["error"]["message"]
        field = "body.input" if "input" in wrong else "body.input_b64"
        assert refused.body["error"]["details"]["field"] == field


async def _policy(api: ApiClient, device_id: str, inference: dict[str, Any]) -> None:
    """Set the device's `inference` policy in a layer of its own and wait until applied."""
    admin = await api.token("admin")
    layer = {"scope": "device", "device": device_id, "document": {"inference": inference}}
    reply = await api.call("PUT", "/api/v1/policy/layers/explain", token=admin, body=layer)
    assert reply.status == 200, reply.body
    version = reply.body.get("version")

    async def applied() -> bool:
        found = await api.call("GET", f"/api/v1/devices/{device_id}/policy", token=admin)
        body = found.body
        return bool(body["version"] and body["applied_version"] == body["version"]) and (
            version is None or body["version"] >= version
        )

    await eventually(applied, timeout=30, what="the policy applied")


async def _flagged(paths: Any, image: Any) -> int:
    """The seq of the flagged result the agent recorded for `image`."""
    local = LocalClient(paths.socket)
    try:

        async def answered() -> Any:
            try:
                return await local.infer("surface-defect", {"input": image[None].tolist()})
            except OSError:
                return None

        status, answer = await eventually(answered, timeout=30, what="the agent answering")
    finally:
        await local.close()
    assert status == 200, answer
    assert answer["label"] == "spot"  # flagged: not the normal label, so recorded
    return int(answer["recorded"]["seq"])


async def test_a_flagged_result_is_explained_after_it_by_policy(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    ModelDirectory(paths.models).install(SHIPPED_MODELS[1])
    agents(paths)
    await _policy(api, identity.device_id, {"explain_flagged": 1.0})  # default: none
    image, mask = _surface(np.random.default_rng(11), "spot")
    seq = await _flagged(paths, image)

    async def explained() -> dict[str, Any]:
        found = await hub.parts.store.records(identity.device_id, "events", after=0, limit=500)
        bodies = [msgpack.unpackb(r.body) if isinstance(r.body, bytes) else r.body for r in found]
        return next((b for b in bodies if b.get("event") == "explanation"), {})

    event = await eventually(explained, timeout=60, what="the explanation at the hub")
    assert (event["result_seq"], event["label"], event["method"]) == (seq, "spot", "occlusion")
    top = event["top"]
    assert mask[top["row"] : top["row"] + top["size"], top["col"] : top["col"] + top["size"]].any()


async def test_the_hub_explains_a_stored_result_only_when_its_input_left_the_device(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    model, manifest, sample = bundle_parts(SHIPPED_MODELS[1])
    assert (await upload(hub, await api.token("admin"), model, manifest, sample)).status == 201
    paths, identity = await enroll_device()
    ModelDirectory(paths.models).install(SHIPPED_MODELS[1])
    agents(paths)
    device = identity.device_id
    operator = await api.token("operator")
    image, mask = _surface(np.random.default_rng(11), "spot")

    async def at_hub(seq: int) -> Any:
        found = await hub.parts.store.records(device, "results", after=seq - 1, limit=1)
        return found[0].body if found and found[0].seq == seq else None

    kept = await _flagged(paths, image)  # the default policy: inputs stay on the device
    held = await eventually(lambda: at_hub(kept), timeout=60, what="the result at the hub")
    await _policy(api, device, {"flagged_inputs": True})
    sent = await _flagged(paths, image)
    carried = await eventually(lambda: at_hub(sent), timeout=60, what="the result at the hub")

    assert "input" not in held
    assert carried["input"]["shape"] == [1, 96, 96, 1]
    assert len(carried["input"]["data"]) == 96 * 96  # int8 bytes, not a list of numbers
    explain = {"patch": 16, "stride": 8}

    async def ask(body: dict[str, Any], token: str | None = operator) -> Any:
        return await api.call("POST", "/api/v1/explain", token=token, body={**explain, **body})

    refused = await ask({"device": device, "seq": kept})
    missing = await ask({"device": device, "seq": sent + 100})
    stranger = await ask({"device": "nobody", "seq": sent})
    doubled = await ask({"device": device, "seq": sent, "input": [[0]]})
    no_seq = await ask({"device": device})
    viewer = await ask({"device": device, "seq": sent}, await api.token("viewer"))
    reply = await ask({"device": identity.name or device, "seq": sent})

    assert refused.status == 422, refused.body
    assert refused.body["error"]["code"] == "no_input"
    assert "inference.flagged_inputs" in refused.body["error"]["message"]
    assert (missing.status, stranger.status, viewer.status) == (404, 404, 403)
    assert f"no result {sent + 100}" in missing.body["error"]["message"]
    assert doubled.body["error"]["details"]["field"] == "body.input"
    assert no_seq.body["error"]["details"]["field"] == "body.seq"
    assert reply.status == 200, reply.body
    answer = reply.body
    assert answer["result"] == {"device": device, "seq": sent}
    assert (answer["model"], answer["version"], answer["label"]) == (
        "surface-defect",
        "1.0.0",
        "spot",
    )
    top = answer["top"]
    assert mask[top["row"] : top["row"] + 16, top["col"] : top["col"] + 16].any()
    png = base64.b64decode(answer["png"])
    assert struct.unpack(">II", png[16:24]) == (96, 96)

    records = f"/api/v1/devices/{device}/records?stream=results&after={sent - 1}&limit=1"
    whole = await api.call("GET", records, token=operator)
    listed = await api.call("GET", records + "&inputs=false", token=operator)
    typo = await api.call("GET", records + "&inputs=no", token=operator)
    assert len(base64.b64decode(whole.body["items"][0]["body"]["input"]["data"])) == 96 * 96
    assert listed.body["items"][0]["body"]["input"] == {
        "dtype": "int8",
        "shape": [1, 96, 96, 1],
        "bytes": 96 * 96,
    }
    assert (typo.status, typo.body["error"]["details"]["field"]) == (400, "query.inputs")


@pytest.mark.parametrize("size", [200_000, 3_000_000])
async def test_the_hub_reads_an_explain_body_whole(api: ApiClient, size: int) -> None:
    """It read what had arrived so far: a valid body of a few MB, sent in pieces, was
    refused as "not JSON". Under the 4 MiB limit it is read whole (here: no such model)."""
    token = await api.token("operator")
    body = {"model": "no-such-model", "version": "1.0.0", "input": [0.0] * (size // 5)}
    reply = await api.call(
        "POST", "/api/v1/explain", token=token, raw=json.dumps(body).encode(),
        content_type="application/json",
    )  # fmt: skip
    assert reply.status == 404, (reply.status, reply.body)
    assert reply.error["message"] == "no model no-such-model 1.0.0 on this hub"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"model": "\\ud800", "version": "1.0.0", "input": [0]}', "body"),
        (b'{"device": "\\ud800", "seq": 1}', "body"),
        (b'{"model": "a\\u0000b", "version": "1.0.0", "input": [0]}', "body"),
        (b"[1, 2]", "body"),
    ],
)
async def test_an_explain_body_is_checked_as_every_body_is(
    api: ApiClient, raw: bytes, field: str
) -> None:
    """A lone surrogate reached the database (a 500), a NUL the model lookup (a 404)."""
    token = await api.token("operator")
    reply = await api.call(
        "POST", "/api/v1/explain", token=token, raw=raw, content_type="application/json"
    )
    assert reply.status == 400, (reply.status, reply.body)
    assert reply.error["details"]["field"] == field
