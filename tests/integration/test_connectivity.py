"""The connectivity matrix: one hub, one agent per link profile, all at the same time.

Each agent reaches the broker through its own link controller (tests/linkproxy.py) that
plays its profile: steady, off/on cycles, a slow link, a lossy one. Records, local
inferences and hub tasks flow all the while. After each link's last heal the test waits
for the drain and the checker (tests/checker.py) proves that every record an agent
confirmed is at the hub exactly once and that every task ended exactly once.

CI plays the 30 s/30 s profile as 15 s/15 s so the matrix takes about two minutes;
`OUTPOST_SOAK=1` plays the profiles in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from edge.inference.directory import ModelDirectory
from hub.app import Hub
from tests.api_client import ApiClient
from tests.checker import Checker, RecordVerdict, TaskVerdict, held_records
from tests.conftest import Enroller
from tests.integration.tasks_support import INPUT, VIB, Member, submit, tasks_of, vib, wait_ready
from tests.integration.test_store_forward import wait_socket, write_agent_settings
from tests.linkproxy import LinkProxy, Shape
from tests.local_api import LocalClient
from tests.support import SHIPPED_MODELS, AgentProcess

SOAK = os.environ.get("OUTPOST_SOAK") == "1"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 if SOAK else 240)]
LONG = 30.0 if SOAK else 12.0  # the 30 s/30 s profile, scaled down for CI
STEADY = 150.0 if SOAK else 45.0  # how long the profiles without outages run
REPEAT = 3 if SOAK else 2  # cycles of the 10 s/10 s, black hole and 5 s/20 s profiles
DRAIN_TIMEOUT = 60.0
RECORD_EVERY = 0.4  # seconds between posts of 1-3 records: a few records a second
INFER_EVERY = 0.5
TASK_EVERY = 2.0
# Agents notice a cut link at once (the proxy resets both sockets) and retry soon: a
# fleet would keep the 60 s default cap, a test cannot wait for it.
AGENT_SETTINGS = "keepalive = 5\nreconnect_max_delay = 2\n[agent.sync]\nack_timeout_s = 3\n"


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\ntask_accept_timeout_s = 10\n"


@dataclass(frozen=True)
class Profile:
    name: str
    cycles: tuple[tuple[float, float], ...] = ()  # (on, off) phases; healed after the last
    shape: Shape = field(default_factory=Shape)
    heal_shape: bool = False  # lift the shape at the end (its heal), or keep it to the end
    steady: float = 0.0  # seconds of traffic for a profile without cycles
    black_hole: bool = False  # off phases hold bytes on open connections instead of refusing


def cycles(on: float, off: float, times: int) -> tuple[tuple[float, float], ...]:
    return ((on, off),) * times


PROFILES = [
    Profile("steady online", steady=STEADY),
    Profile("off/on 5 s/5 s x5", cycles(5, 5, 5)),
    Profile(f"off/on 10 s/10 s x{REPEAT}", cycles(10, 10, REPEAT)),
    Profile(f"off/on {LONG:g} s/{LONG:g} s x2", cycles(LONG, LONG, 2)),
    Profile(f"off/on 5 s/20 s x{REPEAT}", cycles(20, 5, REPEAT)),
    Profile(f"black hole 10 s/10 s x{REPEAT}", cycles(10, 10, REPEAT), black_hole=True),
    Profile(
        "slow 20 KB/s, 300 ms", shape=Shape(rate_bytes_per_s=20_000, delay_s=0.3), steady=STEADY
    ),
    Profile("lossy 2%/chunk", shape=Shape(corrupt_rate=0.02), heal_shape=True, steady=STEADY),
]


@dataclass
class Run:
    profile: Profile
    member: Member
    proxy: LinkProxy
    client: LocalClient
    inferences: dict[int, int] = field(default_factory=dict)  # status -> count
    healed_at: float = 0.0
    drain_s: float = 0.0
    records: RecordVerdict | None = None
    tasks: TaskVerdict | None = None


async def play(run: Run) -> None:
    """Play the profile on the link; note when the link was last healed."""
    profile, proxy = run.profile, run.proxy
    proxy.shape(profile.shape)
    if profile.steady:
        await asyncio.sleep(profile.steady)  # the profile's timing, by design
    for on, off in profile.cycles:
        await asyncio.sleep(on)  # the profile's timing, by design
        cut, heal = (proxy.pause, proxy.resume) if profile.black_hole else (proxy.down, proxy.up)
        cut()
        await asyncio.sleep(off)  # the profile's timing, by design
        heal()
    if profile.heal_shape:
        proxy.shape(Shape())
    run.healed_at = time.monotonic()


async def every(period: float, stop: asyncio.Event, step: Callable[[int], Awaitable[None]]) -> None:
    n = 0
    while not stop.is_set():
        await step(n)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)


async def traffic(
    run: Run, checker: Checker, api: ApiClient, token: str, stop: asyncio.Event
) -> None:
    device_id = run.member.device_id

    async def post(n: int) -> None:
        uids = [uuid.uuid4().hex for _ in range(1 + n % 3)]
        status, answer = await run.client.append("results", [{"uid": u, "n": n} for u in uids])
        assert status == 201, answer
        checker.confirm(device_id, "results", answer, uids)

    async def infer(_: int) -> None:
        status, _answer = await run.client.infer(VIB, {"input": INPUT, "dtype": "int8"})
        run.inferences[status] = run.inferences.get(status, 0) + 1

    async def task(_: int) -> None:
        ids = await submit(
            api, token, [vib(lease_s=10, deadline_s=120, target={"device": device_id})]
        )
        checker.submitted(device_id, ids)

    await asyncio.gather(
        every(RECORD_EVERY, stop, post),
        every(INFER_EVERY, stop, infer),
        every(TASK_EVERY, stop, task),
    )


async def drain(hub: Hub, run: Run, checker: Checker) -> None:
    """Poll until everything confirmed is at the hub and every task ended; time it."""
    device_id = run.member.device_id
    ids = [t for t, d in checker.tasks.items() if d == device_id]
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        held = held_records(hub.paths.database, device_id, "results")
        found = await tasks_of(hub, ids)
        ended = all(
            t.state in ("succeeded", "failed", "expired", "cancelled") for t in found.values()
        )
        if (
            ended and checker.missing(device_id, "results", held) == 0
        ) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)  # polling interval, not synchronisation
    run.drain_s = time.monotonic() - run.healed_at
    results = [h.body for h in held if h.body.get("kind") == "task"]
    run.records = checker.records(device_id, "results", held)
    run.tasks = checker.task_verdict(device_id, found, results)


async def start(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess], profile: Profile
) -> Run:
    assert hub.parts.broker is not None
    proxy = LinkProxy(hub.config.mqtt_port, seed=len(profile.name))
    await proxy.start()
    paths, identity = await enroll_device("generic", {"fleet": "matrix"})
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    write_agent_settings(paths, f'broker = "mqtts://127.0.0.1:{proxy.port}"\n' + AGENT_SETTINGS)
    agent = agents(paths, heartbeat_interval=1.0)
    member = Member(paths, identity.device_id, agent)
    await wait_ready(hub, member)
    client = await wait_socket(paths, agent)
    return Run(profile, member, proxy, client)


def table(runs: list[Run]) -> str:
    head = (
        f"{'profile':<24} {'confirmed':>9} {'at hub':>7} {'missing':>7} {'dup':>4} "
        f"{'ooo':>4} {'drain s':>7} {'tasks':>5} {'ok':>4} {'fail':>4} {'exp':>4} "
        f"{'2x':>2} {'infer':>5} {'conns':>5} {'faults':>6}"
    )
    lines = [head]
    for r in runs:
        assert r.records is not None
        assert r.tasks is not None
        rec, tsk = r.records, r.tasks
        lines.append(
            f"{r.profile.name:<24} {rec.confirmed:>9} {rec.at_hub:>7} {rec.missing:>7} "
            f"{rec.duplicated:>4} {rec.out_of_order:>4} {r.drain_s:>7.1f} {tsk.submitted:>5} "
            f"{tsk.states['succeeded']:>4} {tsk.states['failed']:>4} {tsk.states['expired']:>4} "
            f"{len(tsk.ran_twice):>2} "
            f"{sum(r.inferences.values()):>5} {r.proxy.connections:>5} {r.proxy.faults:>6}"
        )
    return "\n".join(lines)


async def test_every_link_profile_loses_nothing_doubles_nothing_and_ends_every_task_once(
    hub: Hub, api: ApiClient, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    runs = [await start(hub, enroll_device, agents, p) for p in PROFILES]
    token = await api.token("operator")
    checker = Checker()
    began = time.monotonic()
    try:

        async def one(run: Run) -> None:
            stop = asyncio.Event()
            flowing = asyncio.create_task(traffic(run, checker, api, token, stop))
            try:
                await play(run)
            finally:
                stop.set()
                await flowing
            await drain(hub, run, checker)

        await asyncio.gather(*(one(r) for r in runs))
    finally:
        for run in runs:
            await run.client.close()
            await run.proxy.close()
    report = table(runs) + f"\nwhole matrix: {time.monotonic() - began:.0f} s"
    print("\n" + report)

    for run in runs:
        assert run.records is not None, run.profile.name
        assert run.tasks is not None, run.profile.name
        assert run.records.missing == 0, report
        assert run.records.duplicated == 0, report
        assert run.records.mismatched == 0, report
        assert run.tasks.not_ended == 0, report
        assert run.tasks.ended_twice == 0, report
        assert run.tasks.accepted_twice == 0, report
        assert run.tasks.ran_twice == [], report
        assert set(run.inferences) == {200}, (run.profile.name, run.inferences)
