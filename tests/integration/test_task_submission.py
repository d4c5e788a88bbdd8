"""Task submission through the real hub's API, on both back-ends, with no agent: a bad
task is a 400 naming its field, and nothing is half-created; only operators submit, and
a body nested too deeply is a 400; a task no enrolled device could run is a 422 unless
it may wait for its model, and the waiting ones are listed, paged and filtered by state,
each saying why it waits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.app import Hub
from tests.api_client import ApiClient
from tests.databases import hub_backend  # noqa: F401 - each test on both back-ends
from tests.integration.tasks_support import TASK_HUB_SETTINGS, VIB, submit, vib
from tests.support import add_device


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
        ({"tasks": [vib(), {"model": VIB}]}, "body.tasks[1].input", "required"),
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
