"""A compromised device with a valid certificate sends every hostile shape of every `up`
kind (1,000-deep nesting, huge maps, arrays and strings, wrong types), live and retained,
beside an honest agent: the hub stays up and connected, keeps serving its API, applies
the honest agent's heartbeats, counts each refusal and logs it in a bounded line.

Issue 15 item 11: a `model_state` nested 1,000 deep made the refusal's own error text
raise `RecursionError`, which ended the hub; published retained, it ended the hub again
at each restart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import aiomqtt
import msgspec
import pytest

from edge.enroll import enroll
from edge.identity import DevicePaths
from hub.app import Hub
from hub.initialise import initialise
from hub.paths import HubPaths
from outpost import schema, tls, wire
from tests.api_client import ApiClient
from tests.conftest import HUB_TASKS, Enroller
from tests.fuzz.conftest import count
from tests.fuzz.hostile_payloads import (
    deep_list,
    envelope,
    hostile,
    map_of,
    pack,
    valid_bodies,
)
from tests.soak import Api, HubProcess, hub_cli
from tests.support import PROFILES, AgentProcess, eventually, free_port

# A refusal's log line quotes a bounded excerpt of what was sent; the longest hostile
# value is 200 KB. (Generous: the limit on a quoted value is about 100 characters.)
MAX_LOG_LINE = 2_000


def _context(paths: DevicePaths) -> ssl.SSLContext:
    return tls.client_context(paths.ca_cert, paths.cert, paths.key)


def _mqtt(port: int, paths: DevicePaths, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        tls_context=_context(paths),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=30,
    )


def _hello(agent_version: str) -> bytes:
    """A valid hello whose agent version marks it: once the hub shows that version, it
    has handled everything the device sent before."""
    body = schema.load(wire.Hello, valid_bodies()["hello"], "hello")
    marked = msgspec.structs.replace(body, agent_version=agent_version)
    return wire.encode("hello", marked)


def _still_up(hub_task: asyncio.Task[None], after: str) -> None:
    if hub_task.done():
        error = None if hub_task.cancelled() else hub_task.exception()
        raise AssertionError(f"the hub stopped after {after}: {error!r}") from error


def _rejected(outcomes: collections.Counter[tuple[str, str]], kind: str) -> int:
    return sum(n for (k, outcome), n in outcomes.items() if k == kind and "rejected" in outcome)


async def test_hostile_payloads_of_every_kind_leave_the_hub_serving(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    api: ApiClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    hub_task = HUB_TASKS[id(hub)]
    honest_paths, honest = await enroll_device()
    agents(honest_paths, heartbeat_interval=0.5)

    async def honest_online() -> bool:
        device = await hub.parts.store.device(honest.device_id)
        return bool(device and device.online and device.last_heartbeat)

    await eventually(honest_online, timeout=30, what="the honest agent online")
    attacker_paths, attacker = await enroll_device()
    before = collections.Counter(hub.parts.ingest.outcomes)
    sent: collections.Counter[str] = collections.Counter()

    async with _mqtt(hub.config.mqtt_port, attacker_paths, f"{attacker.device_id}-x") as client:
        for kind in wire.UP_KINDS:
            for name, payload in hostile(kind):
                try:
                    await client.publish(wire.up_topic(attacker.device_id, kind), payload, qos=1)
                except aiomqtt.MqttError:
                    # A hub that died takes its broker with it: give its task a
                    # bounded moment to end, so the failure names the hub's error.
                    await asyncio.wait({hub_task}, timeout=5)
                    _still_up(hub_task, f"{kind}: {name}")
                    raise
                sent[kind] += 1
                count("hub hostile device payloads")

        # A device's messages are handled in order: once its marked hello is applied,
        # every payload above has been. Sent again until seen (a flood guard may drop one).
        async def handled() -> bool:
            _still_up(hub_task, "the hostile payloads")
            await client.publish(wire.up_topic(attacker.device_id, "hello"), _hello("mark-1"))
            device = await hub.parts.store.device(attacker.device_id)
            return bool(device and device.agent_version == "mark-1")

        await eventually(handled, timeout=120, every=1.0, what="the hub to reach the mark")

    _still_up(hub_task, "the hostile payloads")
    assert hub.parts.link.state.connected.is_set(), "the hub's link went down"
    # Serving: its API answers, and the honest agent's heartbeats still arrive.
    attacked_at = time.time()

    async def fresh_heartbeat() -> bool:
        device = await hub.parts.store.device(honest.device_id)
        return bool(device and device.online and (device.last_heartbeat or 0) > attacked_at)

    await eventually(fresh_heartbeat, timeout=30, what="an honest heartbeat after the attack")
    reply = await api.call(
        "GET", f"/api/v1/devices/{honest.device_id}", token=await api.token("viewer")
    )
    assert reply.status == 200, reply.body
    # Counted: every kind's refusals show in the outcomes /metrics exports.
    after = hub.parts.ingest.outcomes
    for kind in wire.UP_KINDS:
        assert _rejected(after, kind) > _rejected(before, kind), (kind, sent[kind])
    longest = max((len(r.getMessage()) for r in caplog.records), default=0)
    assert longest <= MAX_LOG_LINE, f"a log line of {longest} characters"


async def test_retained_poison_does_not_stop_the_hub_now_or_at_its_restarts(
    tmp_path: Path,
) -> None:
    """The issue's probe: a retained `model_state` (and `status`) nested 1,000 deep, then
    the hub restarted twice with the broker's retained copies present."""
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    paths.config.write_text(
        f"[hub]\nmqtt_port = {free_port()}\nweb_port = {free_port()}\n"
        "offline_after_heartbeats = 3\n"
    )
    hub = HubProcess(paths, tmp_path)
    await hub.start()
    agent: AgentProcess | None = None
    try:
        viewer = hub_cli("hub.cli", "token", "create", "--data", str(paths.root),
                         "--role", "viewer", "--api-key")  # fmt: skip
        api = Api(hub.config.hub_url, paths.ca_cert, viewer)
        devices = []
        for name in ("honest", "attacker"):
            token = hub_cli("hub.cli", "enroll-token", "--data", str(paths.root))
            device_paths = DevicePaths(tmp_path / name)
            identity = await enroll(token, device_paths, PROFILES / "generic.toml")
            devices.append((device_paths, identity.device_id))
        (honest_paths, honest), (attacker_paths, attacker) = devices
        agent = AgentProcess(honest_paths.root, heartbeat_interval=0.5, log=tmp_path / "a.log")

        async def heartbeat_after(moment: float) -> bool:
            assert hub.process is not None
            if hub.process.poll() is not None:
                log = hub.logs.joinpath(f"hub-{hub.starts}.log").read_text(errors="replace")
                raise AssertionError(f"the hub stopped (start {hub.starts}):\n{log[-3000:]}")
            try:
                status, body = await api.call("GET", f"/api/v1/devices/{honest}")
            except aiohttp.ClientError:  # going down, or not up yet: the next look says
                return False
            return status == 200 and (body.get("last_heartbeat") or 0) > moment

        await eventually(
            lambda: heartbeat_after(0), timeout=30, what="the honest agent's first heartbeat"
        )
        model_state = {**valid_bodies()["model_state"], "state": None}
        poisons = {  # the probe, and the kind whose retained copy the hub needs
            "model_state": envelope("model_state", map_of([
                (k, deep_list() if k == "state" else pack(v)) for k, v in model_state.items()
            ])),
            "status": envelope("status", pack(valid_bodies()["status"]), kind=deep_list()),
        }  # fmt: skip
        async with _mqtt(hub.config.mqtt_port, attacker_paths, f"{attacker}-x") as client:
            for kind, payload in poisons.items():
                await client.publish(wire.up_topic(attacker, kind), payload, qos=1, retain=True)
        for restart in range(3):
            moment = time.time()
            await eventually(
                lambda moment=moment: heartbeat_after(moment),  # type: ignore[misc]
                timeout=30,
                what=f"an honest heartbeat handled after the poison (restart {restart})",
            )
            assert hub.process is not None
            assert hub.process.poll() is None
            count("hub retained poison restarts")
            if restart < 2:  # a clean stop: the broker keeps its retained copies on disk
                hub.process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(hub.process.wait, 60) == 0
                await hub.start()
        await api.close()
        for start in range(1, hub.starts + 1):
            log = hub.logs.joinpath(f"hub-{start}.log").read_text(errors="replace")
            assert "Traceback" not in log, log[-4000:]
            if start > 1:  # the poison came live to the first; no start gets it replayed
                assert "rejected message" not in log, log[-4000:]
            assert max(map(len, log.splitlines()), default=0) <= MAX_LOG_LINE
    finally:
        if agent is not None:
            agent.stop()
        hub.stop()
