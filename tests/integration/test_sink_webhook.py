"""The outbox and a webhook sink against a real hub, broker and agent: every event of a
run (enrollment, presence, tasks and their result records) reaches a real HTTP receiver
signed, once per id, in outbox order; a receiver answering 503 delays delivery without
losing any; one it refuses for good goes to the dead letters and the rest follow; a
replay sends them again; a stalled receiver holds up neither ingest nor tasks; a change
that rolls back publishes nothing. On both back-ends (on PostgreSQL the outbox's writers
take a lock, so ids follow commit order)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from edge.inference.directory import ModelDirectory
from hub.app import Hub
from hub.sinks.base import Event, SinkError
from hub.sinks.config import SinkConfig
from hub.sinks.webhook import WebhookSink
from hub.store import HubStore, outbox
from outpost import tls
from outpost.modelbundle import read_bundle
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.integration.test_cli_remote import run
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, AgentProcess, add_device, eventually, free_port
from tests.tlsfiles import make_tls_files

VIB = "vibration-anomaly"
SAMPLE = read_bundle(SHIPPED_MODELS[0]).sample
assert SAMPLE is not None
INPUT = SAMPLE.input
SECRET = "s3cret-for-the-webhook"


@dataclass
class Receiver:
    """A webhook endpoint: keeps what it accepted, refuses on request."""

    port: int
    accepted: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    unavailable: bool = False  # answer 503 to everything
    refuse: set[str] = field(default_factory=set)  # event types answered 422
    hold: asyncio.Event | None = None  # while set to an unset event, answer nothing
    held: int = 0  # requests waiting on `hold`

    async def handle(self, request: web.Request) -> web.Response:
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Outpost-Signature", ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.unavailable:
            return web.Response(status=503, text="down for maintenance")
        event = json.loads(body)
        assert request.headers["ce-id"] == event["id"]
        assert request.headers["Content-Type"] == "application/cloudevents+json"
        if event["type"] in self.refuse:
            return web.Response(status=422, text=f"no thanks: {event['type']}")
        self.accepted.append(event)
        return web.Response(status=204)

    def ids(self) -> list[int]:
        return [int(e["id"].split("-")[1]) for e in self.accepted]  # evt-<outbox id>-<ms>


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver(free_port())
    app = web.Application()
    app.router.add_post("/events", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


@pytest.fixture
def hub_settings(receiver: Receiver, tmp_path: Path) -> str:
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")
    return (
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"
        "[[hub.sinks]]\n"
        'name = "hook"\n'
        'kind = "webhook"\n'
        f'url = "http://127.0.0.1:{receiver.port}/events"\n'
        f'credentials_file = "{secret}"\n'
        "timeout_s = 5\n"
    )


async def outbox_ids(store: HubStore) -> list[int]:
    return [e.id for e in await store.run(outbox.after, 0, 100_000)]


async def start_agent(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> tuple[str, AgentProcess]:
    paths, identity = await enroll_device("generic", {"site": "north"})
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    agent = agents(paths)

    async def ready() -> bool:
        assert agent.process.poll() is None, agent.output()
        d = await hub.parts.store.device(identity.device_id)
        return bool(d and d.online and d.task_slots > 0 and len(d.models) == 2)

    await eventually(ready, timeout=30, what="the agent ready")
    return identity.device_id, agent


async def tasks_succeeded(hub: Hub, api: ApiClient, count: int) -> None:
    """Submit `count` tasks of the vibration model and wait until each has succeeded."""
    operator = await api.token("operator")
    task = {"model": VIB, "input": INPUT, "dtype": "int8"}
    body = {"tasks": [task] * count}
    submitted = await api.call("POST", "/api/v1/tasks", token=operator, body=body)
    assert submitted.status == 202, submitted.body

    async def done() -> bool:
        found = [await hub.parts.store.task(i) for i in submitted.body["ids"]]
        return all(t is not None and t.state == "succeeded" for t in found)

    await eventually(done, timeout=60, what=f"{count} tasks succeeded")


@pytest.mark.timeout(180)
async def test_every_event_reaches_the_webhook_once_in_order_and_signed(
    hub: Hub,
    api: ApiClient,
    receiver: Receiver,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
) -> None:
    device_id, agent = await start_agent(hub, enroll_device, agents)
    await tasks_succeeded(hub, api, 5)
    agent.stop()  # the device goes offline: its will

    async def offline() -> bool:
        d = await hub.parts.store.device(device_id)
        return bool(d and not d.online)

    await eventually(offline, timeout=30, what="the device offline")

    async def delivered() -> bool:
        written = await outbox_ids(hub.parts.store)
        return bool(written) and set(receiver.ids()) >= set(written)

    await eventually(delivered, timeout=60, what="every outbox event at the receiver")
    written = await outbox_ids(hub.parts.store)
    # In order and once each: the receiver saw exactly the outbox, in its order.
    assert receiver.ids() == written
    assert receiver.bad_signatures == 0
    types = [e["type"] for e in receiver.accepted]
    for wanted in (
        "org.outpost.device.enrolled",
        "org.outpost.device.online",
        "org.outpost.task.queued",
        "org.outpost.task.assigned",
        "org.outpost.task.succeeded",
        "org.outpost.record.result",
        "org.outpost.device.offline",
    ):
        assert wanted in types, (wanted, sorted(set(types)))
    assert types.count("org.outpost.task.succeeded") == 5
    first = receiver.accepted[0]
    assert first["specversion"] == "1.0"
    assert first["source"] == hub.config.hub_url
    mine = [e for e in receiver.accepted if e.get("subject") == device_id]
    assert [e["type"] for e in mine][:2] == [
        "org.outpost.device.enrolled",
        "org.outpost.device.online",
    ]
    assert mine[-1]["type"] == "org.outpost.device.offline"
    result = next(e for e in receiver.accepted if e["type"] == "org.outpost.record.result")
    assert result["data"]["stream"] == "results"
    assert result["data"]["record"]["kind"] == "task"

    # The receiver has each event before the drain keeps its cursor past it.
    hook = await _caught_up(api, await api.token("operator"))
    assert (hook["name"], hook["kind"]) == ("hook", "webhook")
    assert hook["delivered"] == len(written)
    assert hook["state"] in ("idle", "delivering")


async def _caught_up(api: ApiClient, token: str) -> dict[str, Any]:
    """The one sink's entry in the sinks API once its cursor is at the outbox's end."""
    found: list[dict[str, Any]] = []

    async def no_lag() -> bool:
        sinks = await api.call("GET", "/api/v1/sinks", token=token)
        (hook,) = sinks.body["items"]
        found[:] = [hook]
        return bool(hook["lag_events"] == 0)

    await eventually(no_lag, timeout=30, what="the sink's cursor at the outbox's end")
    return found[0]


async def test_a_receiver_that_is_down_delays_and_one_that_refuses_dead_letters(
    hub: Hub, api: ApiClient, receiver: Receiver
) -> None:
    admin = await api.token("admin", subject="alice")
    receiver.unavailable = True
    receiver.refuse = {"org.outpost.device.relabelled"}
    await add_device(hub, "dev-hook00000001")
    relabel = await api.call(
        "PATCH", "/api/v1/devices/dev-hook00000001", token=admin, body={"labels": {"a": "b"}}
    )
    assert relabel.status == 200
    await add_device(hub, "dev-hook00000002")

    async def failing() -> bool:
        sinks = await api.call("GET", "/api/v1/sinks", token=admin)
        hook = sinks.body["items"][0]
        return hook["state"] == "failing" and "503" in hook["error"] and hook["lag_events"] > 0

    await eventually(failing, timeout=30, what="the sink failing on 503")
    assert receiver.accepted == []
    receiver.unavailable = False

    async def drained() -> bool:
        written = await outbox_ids(hub.parts.store)
        refused = [i for i in written if i not in receiver.ids()]
        return len(refused) == 1 and len(receiver.ids()) == len(written) - 1

    await eventually(drained, timeout=90, what="all but the refused event delivered")
    hook = await _caught_up(api, admin)
    assert hook["dead_lettered"] == 1
    assert hook["retried"] >= 1
    assert [e["subject"] for e in receiver.accepted if e["type"].endswith("enrolled")] == [
        "dev-hook00000001",
        "dev-hook00000002",
    ]
    letters = await api.call("GET", "/api/v1/sinks/hook/dead-letters", token=admin)
    (letter,) = letters.body["items"]
    assert letter["type"] == "org.outpost.device.relabelled"
    assert letter["event"]["subject"] == "dev-hook00000001"
    assert "422" in letter["reason"]

    # A consumer that lost data asks for it again.
    before = len(receiver.accepted)
    replay = await api.call("POST", "/api/v1/sinks/hook/replay", token=admin, body={"from_time": 0})
    assert replay.status == 200, replay.body
    receiver.refuse = set()

    async def replayed() -> bool:
        return len(receiver.accepted) >= before + len(await outbox_ids(hub.parts.store))

    await eventually(replayed, timeout=60, what="the replay delivered")
    unknown = await api.call(
        "POST", "/api/v1/sinks/nope/replay", token=admin, body={"from_time": 0}
    )
    assert unknown.status == 404
    assert "sinks: hook" in unknown.error["message"]


async def test_a_change_that_rolls_back_publishes_nothing(hub: Hub) -> None:
    store = hub.parts.store
    before = await outbox_ids(store)

    def failing_change(db: Any) -> None:
        with db.write():
            outbox.emit(db, "device.online", "dev-x", {"detail": "never"}, time.time())
            raise RuntimeError("the change fails after its event was written")

    with pytest.raises(RuntimeError):
        await store.run(failing_change)
    assert await outbox_ids(store) == before


async def test_the_cli_lists_sinks_and_replays(
    hub: Hub, api: ApiClient, receiver: Receiver, tmp_path: Path
) -> None:
    token = tmp_path / "admin.token"
    token.write_text(await api.token("admin"))
    where = (
        "--hub",
        hub.config.hub_url,
        "--ca",
        str(hub.paths.ca_cert),
        "--token-file",
        str(token),
    )
    await add_device(hub, "dev-clisink00001")

    async def delivered() -> bool:
        return len(receiver.accepted) >= len(await outbox_ids(hub.parts.store)) > 0

    await eventually(delivered, timeout=30, what="the enrollment event delivered")
    listed = await run("hub.cli", "sinks", "list", *where)
    again = await run("hub.cli", "sinks", "replay", "hook", "--from", "1h", *where)
    letters = await run("hub.cli", "sinks", "dead-letters", "hook", "--json", *where)
    unknown = await run("hub.cli", "sinks", "replay", "nope", "--from", "1h", *where)

    assert listed.code == 0, listed.err
    header, row = listed.out.splitlines()
    assert header.split()[:3] == ["SINK", "KIND", "STATE"]
    assert row.split()[:2] == ["hook", "webhook"]
    assert again.code == 0, again.err
    assert again.out.startswith("sink hook delivers 1 kept events again")
    assert letters.code == 0
    assert letters.json() == []
    assert unknown.code == 1
    assert "no sink 'nope' (sinks: hook)" in unknown.err

    async def replayed() -> bool:
        seen = [e for e in receiver.accepted if e.get("subject") == "dev-clisink00001"]
        return len(seen) == 2

    await eventually(replayed, timeout=30, what="the replayed event delivered again")


@pytest.mark.timeout(180)
async def test_a_stalled_receiver_holds_up_neither_ingest_nor_the_api(
    hub: Hub,
    api: ApiClient,
    receiver: Receiver,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
) -> None:
    receiver.hold = asyncio.Event()  # the receiver takes requests and never answers
    device_id, _ = await start_agent(hub, enroll_device, agents)
    await eventually(lambda: _held(receiver), timeout=30, what="the sink stuck on the receiver")
    # Results come in, are stored and end their tasks while the sink waits on the receiver.
    await tasks_succeeded(hub, api, 5)
    assert receiver.accepted == []
    waiting = await outbox_ids(hub.parts.store)
    receiver.hold.set()

    async def caught_up() -> bool:
        return set(receiver.ids()) >= set(waiting)

    await eventually(caught_up, timeout=60, what="the sink caught up")
    assert device_id in {e.get("subject") for e in receiver.accepted}


async def _held(receiver: Receiver) -> bool:
    return receiver.held > 0


async def test_a_rollout_started_and_halted_is_published(
    hub: Hub, api: ApiClient, receiver: Receiver
) -> None:
    admin = await api.token("admin", subject="alice")
    await add_device(hub, "dev-roll00000001", labels={"site": "south"})
    model, manifest, sample = bundle_parts(SHIPPED_MODELS[0], version="1.1.0")
    uploaded = await upload(hub, admin, model, manifest, sample)
    assert uploaded.status == 201, uploaded.body
    started = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=admin,
        body={"model": VIB, "version": "1.1.0", "selector": {"site": "south"}},
    )
    assert started.status == 201, started.body
    rollout_id = started.body["id"]
    halted = await api.call(
        "POST", f"/api/v1/rollouts/{rollout_id}/halt", token=admin, body={"reason": "test"}
    )
    assert halted.status == 200, halted.body

    await eventually(
        lambda: _at_least(receiver, "org.outpost.rollout.halted"), timeout=30, what="the halt"
    )
    found = [e for e in receiver.accepted if e["type"].startswith("org.outpost.rollout.")]
    assert [e["type"] for e in found] == [
        "org.outpost.rollout.started",
        "org.outpost.rollout.halted",
    ]
    assert "subject" not in found[0]  # fleet-wide
    assert found[0]["data"]["rollout_id"] == rollout_id
    assert found[0]["data"]["devices"] == {"released": 1}
    assert found[1]["data"]["reason"] == "halted by alice: test"


async def _at_least(receiver: Receiver, kind: str) -> bool:
    return any(e["type"] == kind for e in receiver.accepted)


async def test_webhook_over_mutual_tls_trusts_its_ca_file_only(tmp_path: Path) -> None:
    """An https:// receiver on a private CA that asks for a client certificate: the sink
    with `ca_file` and the hub's certificate delivers; one trusting another CA refuses
    the receiver before sending anything."""
    files = make_tls_files(tmp_path / "tls")
    found = Receiver(free_port())
    app = web.Application()
    app.router.add_post("/events", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = tls.server_context(files.server_cert, files.server_key, client_ca=files.ca)
    await web.TCPSite(runner, "127.0.0.1", found.port, ssl_context=context).start()
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET)
    mutual = SinkConfig(
        "hook",
        "webhook",
        f"https://127.0.0.1:{found.port}/events",
        credentials_file=str(secret),
        timeout_s=5,
        ca_file=str(files.ca),
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    event = Event(
        "evt-1",
        "org.outpost.device.online",
        "https://hub.test",
        "dev-1",
        "2026-12-04T12:00:00Z",
        {},
    )
    try:
        sink = WebhookSink(mutual)
        await sink.start()
        await sink.publish([event])
        await sink.close()
        assert [e["id"] for e in found.accepted] == ["evt-1"]

        stranger = WebhookSink(msgspec.structs.replace(mutual, ca_file=str(files.other_ca)))
        await stranger.start()
        with pytest.raises(SinkError, match="certificate verify failed"):
            await stranger.publish([event])
        await stranger.close()
        assert len(found.accepted) == 1
    finally:
        await runner.cleanup()
