"""Task submission through the real hub's API, on both back-ends, with no agent: a bad
task is a 400 naming its field, and nothing is half-created; only operators submit, and
a body nested too deeply is a 400; a task no enrolled device could run is a 422 unless
it may wait for its model, and the waiting ones are listed, paged and filtered by state,
each saying why it waits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from hub.store.catalog import StoredModel
from hub.store.presence import HelloSeen
from hub.tasks.fleetmodels import FleetModels
from hub.tasks.inputshapes import InputShapes
from outpost.tensorshape import Flat
from tests.api_client import ApiClient
from tests.databases import hub_backend  # noqa: F401 - each test on both back-ends
from tests.integration.tasks_support import TASK_HUB_SETTINGS, VIB, submit, vib
from tests.model_upload import bundle_parts
from tests.model_upload import upload as upload_model
from tests.support import SHIPPED_MODELS, add_device


@pytest.fixture
def hub_settings() -> str:
    return TASK_HUB_SETTINGS


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": VIB, "input": [[2**70]]}, "body.input", "cannot be encoded"),
        ({"model": VIB, "input": "x"}, "body.input", "non-empty list"),
        ({"model": VIB, "input": [[1.0] * 20_000] * 1}, "body.input", "over the limit"),
        ({"model": VIB, "input": [[1]], "priority": 10}, "body.priority", "at most 9"),
        # A year and a day at most: a thousand years was taken, and broke every listing.
        ({"model": VIB, "input": [[1]], "deadline_s": 1e300}, "body.deadline_s", "at most 316"),
        ({"model": VIB, "input": [[1]], "colour": "red"}, "body.colour", "unknown key"),
        (
            {"model": VIB, "input": [[1]], "target": {"device": "dev-x", "selector": {"a": "b"}}},
            "body.target",
            "not both",
        ),
        (
            {"model": VIB, "input": [[1]], "target": {"device": "dev-nope"}},
            "body.target.device",
            "no device",
        ),
        (
            {"model": VIB, "input": [[[[[[[[[[[[[1]]]]]]]]]]]]]},
            "body.input",
            "nests deeper than 12",
        ),
        ({"model": VIB, "input": ["x"]}, "body.input", "numbers only"),
        ({"model": VIB, "input": [[True]]}, "body.input", "numbers only"),
        ({"model": VIB, "input": [None]}, "body.input", "numbers only"),
        ({"model": VIB, "input": [{"a": 1}]}, "body.input", "numbers only"),
        ({"model": VIB, "input": [[1], [2, 3]]}, "body.input", "is not rectangular"),
        ({"model": VIB, "input": [[]]}, "body.input", "holds an empty list"),
        ({"model": VIB, "input": [[1], "2"]}, "body.input", "numbers only"),
        ({"tasks": [vib(wait_for_model=True), {"model": VIB}]}, "body.tasks[1].input", "non-empty"),
        ({"model": VIB, "input_b64": "AAAA!"}, "body.input_b64", "not base64"),
        ({"model": VIB, "input_b64": "AAA="}, "body.input_b64", "2 bytes: not a whole"),
        ({"model": VIB, "input_b64": "AAAA", "input": [[1]]}, "body.input", "not both"),
        (
            {"model": VIB, "input_b64": base64.b64encode(bytes(200_000)).decode()},
            "body.input_b64",
            "over the limit",
        ),
        ({"tasks": []}, "body.tasks", "submit 1 to"),
    ],
)
async def test_a_bad_task_is_refused_naming_the_field(
    hub: Hub, api: ApiClient, body: dict[str, Any], field: str, words: str
) -> None:
    token = await api.token("operator")

    reply = await api.call("POST", "/api/v1/tasks", token=token, body=body)

    assert reply.status == 400, reply.body
    assert reply.error["details"]["field"] == field
    assert words in reply.error["message"]
    assert await hub.parts.store.task_counts() == {}  # nothing half-created


async def test_only_operators_submit_and_a_deep_body_is_a_400(hub: Hub, api: ApiClient) -> None:
    viewer = await api.token("viewer")
    reply = await api.call("POST", "/api/v1/tasks", token=viewer, body=vib())
    assert reply.status == 403
    operator = await api.token("operator")
    deep = b'{"model": "m", "input": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    reply = await api.call("POST", "/api/v1/tasks", token=operator, raw=deep)
    assert reply.status == 400
    assert "nested too deeply" in reply.error["message"]


async def test_a_task_no_device_could_run_is_refused_unless_it_may_wait(
    hub: Hub, api: ApiClient
) -> None:
    token = await api.token("operator")
    refused = await api.call("POST", "/api/v1/tasks", token=token, body=vib())
    assert refused.status == 422, refused.body
    assert refused.error["details"]["field"] == "body.model"
    assert (
        f"no enrolled device has the model {VIB}; the fleet has: no models"
        in (refused.error["message"])
    )
    assert await hub.parts.store.task_counts() == {}

    ids = []
    for _ in range(3):
        ids += await submit(api, token, [{**vib(), "wait_for_model": True}])
    cancelled = await api.call("POST", f"/api/v1/tasks/{ids[1]}/cancel", token=token)
    assert cancelled.status == 200
    newest = await api.call(
        "GET", "/api/v1/tasks?state=queued,cancelled&order=newest&limit=2", token=token
    )
    after = newest.body["next_cursor"]
    rest = await api.call(
        "GET", f"/api/v1/tasks?state=queued,cancelled&order=newest&cursor={after}", token=token
    )
    queued = await api.call("GET", "/api/v1/tasks?state=queued&state=running", token=token)
    unknown = await api.call("GET", "/api/v1/tasks?state=queued,done", token=token)

    assert [t["id"] for t in newest.body["items"]] == [ids[2], ids[1]]
    assert [t["id"] for t in rest.body["items"]] == [ids[0]]
    assert [(t["id"], t["waiting"]) for t in queued.body["items"]] == [
        (ids[0], f"no device has the model {VIB}"),
        (ids[2], f"no device has the model {VIB}"),
    ]
    assert [t["waiting"] for t in newest.body["items"]] == [f"no device has the model {VIB}", ""]
    assert unknown.status == 400
    assert "no state 'done'" in unknown.error["message"]


async def test_a_task_for_a_revoked_device_is_refused(hub: Hub, api: ApiClient) -> None:
    """It was queued (202) for a device that will never run it, until its deadline."""
    await add_device(hub, "dev-revoked0001")
    await add_device(hub, "dev-kept000001")
    admin = await api.token("admin")
    assert (
        await api.call("POST", "/api/v1/devices/dev-revoked0001/revoke", token=admin)
    ).status == 200
    wait = {"wait_for_model": True}

    refused = await api.call(
        "POST", "/api/v1/tasks", token=admin,
        body=vib(target={"device": "dev-revoked0001"}, **wait),
    )  # fmt: skip
    taken = await api.call(
        "POST", "/api/v1/tasks", token=admin, body=vib(target={"device": "dev-kept000001"}, **wait)
    )

    assert refused.status == 400, refused.body
    assert refused.error["details"]["field"] == "body.target.device"
    assert "'dev-revoked0001' is revoked: it runs no task" in refused.error["message"]
    assert taken.status == 202, taken.body


async def test_a_submission_is_audited_once_with_its_tasks(hub: Hub, api: ApiClient) -> None:
    """The accepted submission's entry is written in the tasks' own commit (one synced
    commit, not two), not again by the guard; a refused one is audited by the guard."""
    token = await api.token("operator", subject="submitter")

    ids = await submit(api, token, [{**vib(), "wait_for_model": True}] * 2)
    refused = await api.call("POST", "/api/v1/tasks", token=token, body=vib())

    assert refused.status == 422, refused.body
    entries = [
        e
        for e in await hub.parts.store.audit_log(before=None, limit=10)
        if e.subject == "submitter"
    ]
    assert [(e.action, e.status, e.method, e.path) for e in entries] == [
        ("task.submit", 422, "POST", "/api/v1/tasks"),
        ("task.submit", 202, "POST", "/api/v1/tasks"),
    ]
    assert json.loads(entries[1].detail) == {"tasks": 2, "first": ids[0]}
    assert entries[1].role == "operator"


async def test_an_input_no_version_the_hub_holds_accepts_is_refused(
    hub: Hub, api: ApiClient
) -> None:
    """It was queued (202), sent, and failed on its device (`bad_shape`). Only what the
    hub knows is checked: a version it holds no manifest for is left to its device."""
    admin = await api.token("admin")
    model, manifest, sample = bundle_parts(SHIPPED_MODELS[0])
    assert (await upload_model(hub, admin, model, manifest, sample)).status == 201
    token = await api.token("operator")
    wait = {"wait_for_model": True}
    three_axes = [[n % 7, 1, -1] for n in range(128)]  # [128, 3]: no batch dimension

    wrong = await api.call("POST", "/api/v1/tasks", token=token, body=vib(input=[[1]], **wait))
    batch = await api.call(
        "POST", "/api/v1/tasks", token=token,
        body={"tasks": [vib(input=[three_axes], **wait), vib(input=[[[1, 2]]], **wait)]},
    )  # fmt: skip
    unknown_version = vib(input=[[1]], version="9.9.9", **wait)
    accepted = [
        await api.call("POST", "/api/v1/tasks", token=token, body=body)
        for body in (vib(**wait), vib(input=three_axes, **wait), unknown_version)
    ]
    # A device that reports a version the hub holds no manifest for may run it.
    await hub.parts.store.record_presence(
        [HelloSeen("dev-own0000001", "c", time.time(), "generic", "1", 1.0, {}, "rt", [
            {"name": VIB, "version": "0.9.0", "sha256": "", "state": "ready", "error": ""}
        ], 1)]
    )  # fmt: skip
    as_bytes = [
        await api.call("POST", "/api/v1/tasks", token=token, body=body)
        for body in (
            vib(input=None, input_b64=base64.b64encode(bytes(383)).decode(), **wait),
            vib(input=None, input_b64=base64.b64encode(bytes(384)).decode(), **wait),
            vib(input=None, dtype="float32", input_b64=base64.b64encode(bytes(1536)).decode()),
        )
    ]
    beside_own = await api.call("POST", "/api/v1/tasks", token=token, body=vib(input=[[1]]))

    assert wrong.status == 400, wrong.body
    assert wrong.error["details"]["field"] == "body.input"
    assert wrong.error["message"] == (
        "input shape [1, 1] does not match the model's input [1, 128, 3] "
        "(or [128, 3] without the batch dimension)"
    )
    assert batch.status == 400, batch.body
    assert batch.error["details"]["field"] == "body.tasks[1].input"
    assert [reply.status for reply in accepted] == [202, 202, 202]
    assert as_bytes[0].status == 400, as_bytes[0].body
    assert as_bytes[0].error["details"]["field"] == "body.input_b64"
    assert as_bytes[0].error["message"] == (
        "input is 383 bytes; the model takes 384 int8 values (384 bytes, shape [1, 128, 3])"
    )
    assert [reply.status for reply in as_bytes[1:]] == [202, 202]
    assert beside_own.status == 202, beside_own.body
    assert sum((await hub.parts.store.task_counts()).values()) == 6  # none of the refused


async def test_versions_with_different_inputs_are_each_a_fit(hub: Hub) -> None:
    """An input fits when it fits one version the task may run on; refused, it is told
    every shape it could have had."""
    store = hub.parts.store
    for version, shape in (("1.0.0", [1, 4]), ("2.0.0", [1, 2, 2]), ("3.0.0", [1, 4])):
        manifest: dict[str, object] = {"name": "m", "version": version, "input": {"shape": shape}}
        await store.add_model(
            StoredModel("m", version, "0" * 64, 1, manifest, b"{}", b"", time.time(), "t")
        )
    shapes = InputShapes(store, FleetModels(store))

    assert await shapes.refusal("m", "", [4]) is None
    assert await shapes.refusal("m", "", [2, 2]) is None
    assert await shapes.refusal("m", "2.0.0", [2, 2]) is None
    assert await shapes.refusal("m", "1.0.0", [2, 2]) == (
        "input shape [2, 2] does not match the model's input [1, 4] "
        "(or [4] without the batch dimension)"
    )
    assert await shapes.refusal("m", "", [3]) == (
        "input shape [3] matches none of m's inputs: [1, 2, 2] (2.0.0); [1, 4] (1.0.0, 3.0.0)"
    )
    assert await shapes.refusal("other", "", [3]) is None  # nothing known of it
    # The tensor's bytes fit a shape of as many values.
    assert await shapes.refusal("m", "", Flat(16, "float32")) is None
    assert await shapes.refusal("m", "1.0.0", Flat(4, "int8")) is None
    assert await shapes.refusal("m", "1.0.0", Flat(4, "float32")) == (
        "input is 4 bytes; the model takes 4 float32 values (16 bytes, shape [1, 4])"
    )
    assert await shapes.refusal("m", "", Flat(12, "float32")) == (
        "input of 12 bytes (3 float32 values) matches none of m's inputs: "
        "[1, 2, 2] (2.0.0); [1, 4] (1.0.0, 3.0.0)"
    )


@pytest.mark.parametrize("committed", [True, False], ids=["after-commit", "before-commit"])
async def test_a_submission_cancelled_midway_is_audited_if_and_only_if_it_was_queued(
    hub: Hub, api: ApiClient, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """The hub stopping cancels a request while its transaction runs on the store's
    thread, which may commit all the same: its entry went with it. The guard wrote a
    500 of its own beside it (a queued task logged as failed, twice)."""
    dispatcher = hub.parts.dispatcher
    token = await api.token("operator", subject="submitter")

    def cancelled(store: object, name: str) -> None:
        run = getattr(store, name)

        async def cancelled_around_it(*args: Any, **kwargs: Any) -> Any:
            if committed:
                await run(*args, **kwargs)
            raise asyncio.CancelledError

        monkeypatch.setattr(store, name, cancelled_around_it)

    cancelled(dispatcher._store, "create_and_allocate")  # on the replica that leads
    cancelled(dispatcher._queue, "create_tasks")  # on one that does not
    with contextlib.suppress(aiohttp.ClientError):  # the answer never comes
        await api.call("POST", "/api/v1/tasks", token=token, body=vib(wait_for_model=True))

    entries = [
        e
        for e in await hub.parts.store.audit_log(before=None, limit=10)
        if e.subject == "submitter"
    ]
    counts = await hub.parts.store.task_counts()
    if committed:
        assert [(e.action, e.status) for e in entries] == [("task.submit", 202)]
        assert counts == {"queued": 1}
    else:
        assert entries == []
        assert counts == {}
