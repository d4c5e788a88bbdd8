"""The mixed-path checker: one device whose link comes and goes (the test's link
controller) syncs by MQTT when it is up and by courier bundles carried both ways at any
time: device bundles imported with or without an ack, acks carried late, out of order,
or not at all, hub bundles leasing tasks, old bundles imported again. After a first
bundle (its ack carried back or not), a seeded random plan (`OUTPOST_COURIER_SEED`
repeats one) mixes them with records and tasks; then every hub bundle still on the
stick is carried in and the link comes up for good, and the checker (tests/checker.py)
judges: every record the device confirmed at the hub exactly once, every task ended
once, no result accepted twice. It prints its figures (`pytest -s`)."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hub.app import Hub
from tests.api_client import ApiClient
from tests.checker import Checker, held_records
from tests.conftest import Enroller
from tests.integration.tasks_support import submit, tasks_of, vib
from tests.integration.test_courier import (
    cli,
    held_on_device,
    offline_agent,
    proxy,  # noqa: F401 - the fixture
)
from tests.linkproxy import LinkProxy
from tests.support import AgentProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 80
CONVERGE_S = 180.0  # after the last heal, on a machine 5x slower
TERMINAL = ("succeeded", "failed", "expired", "cancelled")
ACTIONS = {  # weights of each step
    "records": 5,
    "tasks": 2,
    "link": 3,
    "device_bundle": 3,
    "carry_ack": 2,
    "hub_bundle": 2,
    "reimport": 1,
}


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\ntask_accept_timeout_s = 10\n"


async def run(program: str, *args: str | Path) -> tuple[int, str]:
    """A CLI command off the event loop (the hub in this process serves MQTT meanwhile)."""
    done = await asyncio.to_thread(cli, program, *args)
    return done.returncode, done.stdout + done.stderr


async def test_bundles_and_mqtt_mixed_at_random_converge(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("OUTPOST_COURIER_SEED", random.randrange(1 << 30)))
    plan = random.Random(seed)
    print(f"\nmixed-path checker: seed {seed} (OUTPOST_COURIER_SEED={seed} repeats it)")
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    checker = Checker()
    operator = await api.token("operator")
    root, hub_root = paths.root, hub.paths.root
    figures: collections.Counter[str] = collections.Counter()
    device_bundles: list[Path] = []  # exported, for a later re-import
    acks: list[Path] = []  # hub bundles on the stick, not yet carried to the device
    up = False
    n = 0
    trace: list[str] = []  # what each step did, shown when the verdict fails

    def folder(kind: str) -> Path:
        nonlocal n
        n += 1
        return tmp_path / f"{n:03d}-{kind}"

    # The first trip: the hub learns what the device runs (tasks fit it from then) and
    # takes the fresh store's numbering. Its ack comes back at once, or not at all: the
    # store may then hear the hub's marks over MQTT first, and the hello's answer says
    # that the hub numbers as this store does (wire.Ack.numbered_by), so nothing the
    # bundle carried is sent again under new numbers.
    first, first_ack = folder("hello"), folder("hello-ack")
    assert (await run("agent", "bundle", "export", "--data", root, "--to", first))[0] == 0
    code, said = await run("hub", "bundle", "import", "--data", hub_root, first,
                           "--ack-out", first_ack)  # fmt: skip
    assert code == 0, said
    first_carried = plan.random() < 0.5
    figures["first ack carried"] += first_carried
    if first_carried:
        assert (await run("agent", "bundle", "import", "--data", root, first_ack))[0] == 0
    try:
        for _ in range(STEPS):
            action = plan.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            figures[f"step {action}"] += 1
            said = ""
            if action == "records":
                uids = [uuid.uuid4().hex for _ in range(plan.randint(1, 8))]
                status, answer = await client.append(
                    "results", [{"uid": u, "n": i} for i, u in enumerate(uids)]
                )
                assert status == 201, answer
                checker.confirm(device_id, "results", answer, uids)
                said = f"{answer['first_seq']}-{answer['last_seq']}"
            elif action == "tasks":
                task = vib(lease_s=30, deadline_s=3600, target={"device": device_id})
                ids = await submit(api, operator, [task] * plan.randint(1, 3))
                checker.submitted(device_id, ids)
            elif action == "link":
                up = not up
                (proxy.up if up else proxy.down)()
                figures["link " + ("up" if up else "down")] += 1
            elif action == "device_bundle":
                out = folder("device")
                code, said = await run("agent", "bundle", "export", "--data", root, "--to", out)
                assert code == 0, said
                device_bundles.append(out)
                answer = plan.random() < 0.7
                ack = folder("ack")
                extra: list[str | Path] = ["--ack-out", ack] if answer else []
                code, said = await run("hub", "bundle", "import", "--data", hub_root, out, *extra)
                assert code == 0, said
                figures["device bundles imported"] += 1
                if answer:
                    acks.append(ack)
            elif action == "hub_bundle":
                out = folder("hub")
                lease = ("--lease", "1d")
                code, said = await run(
                    "hub", "bundle", "export", "--data", hub_root, "--device", device_id,
                    "--to", out, *lease,
                )  # fmt: skip
                assert code == 0, said
                figures["hub bundles exported"] += 1
                acks.append(out)
            elif action == "carry_ack" and acks:
                carried = acks.pop(plan.randrange(len(acks)))  # late, out of order
                figures["hub bundles carried out of order"] += bool(acks) and carried != acks[-1]
                code, said = await run("agent", "bundle", "import", "--data", root, carried)
                assert code == 0, said
                figures["hub bundles carried"] += 1
            elif action == "reimport" and device_bundles:
                again = plan.choice(device_bundles)
                code, said = await run("hub", "bundle", "import", "--data", hub_root, again)
                assert code == 1, said
                assert "was imported already" in said, said
                figures["replays refused"] += 1
            trace.append(f"{action} (link {'up' if up else 'down'}): {said.strip()}")

        # The last trip: every hub bundle on the stick reaches the device, in any order,
        # and the link comes back for good.
        plan.shuffle(acks)
        for carried in acks:
            code, said = await run("agent", "bundle", "import", "--data", root, carried)
            assert code == 0, said
            figures["hub bundles carried"] += 1
        proxy.up()
        healed = time.monotonic()
        ids = list(checker.tasks)
        deadline = healed + CONVERGE_S
        while True:
            held = held_records(hub.paths.database, device_id, "results")
            found = await tasks_of(hub, ids)
            ended = all(t.state in TERMINAL for t in found.values())
            drained = checker.missing(device_id, "results", held) == 0
            if (ended and drained and held_on_device(paths) == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # polling interval, not synchronisation
        converge_s = time.monotonic() - healed
    finally:
        await client.close()

    records = checker.records(device_id, "results", held)
    results = [h.body for h in held if h.body.get("kind") == "task"]
    tasks = checker.task_verdict(device_id, found, results)
    by_path = collections.Counter(
        "bundle" if "courier bundle" in (e.detail or "") else "mqtt"
        for t in found.values()
        for e in t.events
        if e.state == "assigned"
    )
    print(
        f"steps {STEPS}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(figures.items()))
        + f"\nrecords: confirmed {records.confirmed}, at hub {records.at_hub}, missing "
        f"{records.missing}, duplicated {records.duplicated}, mismatched {records.mismatched}"
        f"\ntasks: submitted {tasks.submitted}, states {dict(tasks.states)}, assigned by "
        f"{dict(by_path)}, not ended {tasks.not_ended}, ended twice {tasks.ended_twice}, "
        f"accepted twice {tasks.accepted_twice}, ran twice {len(tasks.ran_twice)}"
        f"\nconverged {converge_s:.1f} s after the last heal"
    )
    if records.duplicated or records.missing or records.mismatched or tasks.ended_twice:
        print("\n".join(trace))
    assert records.missing == 0, records
    assert records.duplicated == 0, records
    assert records.mismatched == 0, records
    assert tasks.not_ended == 0, tasks
    assert tasks.ended_twice == 0, tasks
    assert tasks.accepted_twice == 0, tasks
    assert held_on_device(paths) == 0
    assert agent.process.poll() is None
