"""Courier bundles end to end, with no link between agent and hub (the test's link proxy
is down throughout): the agent exports what the hub lacks, the hub stores it once and
answers with an ack bundle, the agent forgets what the hub holds; a bundle imported
twice changes nothing the second time; and a device that also gets its link back
converges with MQTT: every record at the hub exactly once."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_sql
from tests.integration.test_sink_webhook import INPUT, VIB
from tests.integration.test_store_forward import hub_records, wait_socket
from tests.linkproxy import LinkProxy
from tests.local_api import LocalClient
from tests.model_upload import bundle_parts, upload
from tests.support import REPO, SHIPPED_MODELS, AgentProcess, eventually, free_port

RECORDS = 120


def cli(program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    module = {"agent": "edge.cli", "hub": "hub.cli"}[program]
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


@pytest.fixture
async def proxy(hub: Hub) -> AsyncIterator[LinkProxy]:
    link = LinkProxy(hub.config.mqtt_port)
    await link.start()
    link.down()  # no link at all, until a test brings it up
    yield link
    await link.close()


async def offline_agent(
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    *,
    models: bool = False,
) -> tuple[DevicePaths, str, AgentProcess, LocalClient]:
    paths, identity = await enroll_device()
    if models:
        directory = ModelDirectory(paths.models)
        for folder in SHIPPED_MODELS:
            directory.install(folder)
    # No link at all: neither the broker (the proxy is down) nor the hub's HTTPS API
    # (where the daemon would renew its certificate) can be reached.
    cut_off = dataclasses.replace(identity, hub_url=f"https://127.0.0.1:{free_port()}")
    cut_off.save(paths)
    paths.config.write_text(
        f'[agent]\nbroker = "mqtts://127.0.0.1:{proxy.port}"\nreconnect_spread_s = 1\n'
        "reconnect_max_delay = 1\n"
    )
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    return paths, identity.device_id, agent, client


async def produce(client: LocalClient, first: int, count: int) -> None:
    for n in range(first, first + count):
        status, answer = await client.append("results", [{"n": n, "label": "ok"}])
        assert status == 201, answer


def held_on_device(paths: DevicePaths) -> int:
    """Records of the results stream still in the agent's store (read beside it)."""
    with contextlib.closing(sqlite3.connect(paths.store, timeout=30)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM records WHERE stream = 'results'").fetchone()
    return int(count)


def bundle_events(hub: Hub, device_id: str) -> list[str]:
    rows = hub_sql(
        hub.config.database(hub.paths.database),
        "SELECT detail FROM device_events WHERE device_id = ? AND kind = 'bundle_imported'",
        (device_id,),
    )
    return [r[0] for r in rows]


async def test_a_round_trip_by_bundle_with_no_link(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, RECORDS)
    finally:
        await client.close()
    to_hub, to_device = tmp_path / "stick-to-hub", tmp_path / "stick-to-device"

    exported = cli("agent", "bundle", "export", "--data", paths.root, "--to", to_hub,
                   "--max-size", "64K")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert f"(results {RECORDS}, events" in exported.stdout  # events: agent.started ...
    exported_again = cli("agent", "bundle", "export", "--data", paths.root, "--to",
                         tmp_path / "again")  # fmt: skip
    assert f"(results {RECORDS}, events" in exported_again.stdout  # the same, until acked
    assert hub_records(hub, device_id) == []

    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, to_hub,
                   "--ack-out", to_device)  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"{device_id}: " in imported.stdout
    held = hub_records(hub, device_id)
    assert [body["n"] for _, body in held] == list(range(1, RECORDS + 1))
    device = await hub.parts.store.device(device_id)
    assert device is not None
    assert device.last_seen is not None
    assert device.bundle_at == device.last_seen  # "last seen via bundle, at ..."
    assert not device.online
    # What a heartbeat would have said, as of the bundle: its store holds the records.
    assert device.store is not None
    assert device.store["streams"]["results"]["records"] == RECORDS
    assert "cpu_percent" in device.load
    assert len(bundle_events(hub, device_id)) == 1

    # The same bundle again: refused, nothing stored twice.
    twice = cli("hub", "bundle", "import", "--data", hub.paths.root, to_hub)
    assert twice.returncode == 1
    assert "was imported already" in twice.stdout
    # The second export (same records, another bundle id) stores nothing new either.
    second = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "again")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already held" in second.stdout  # a roll-up written meanwhile may be new
    assert len(hub_records(hub, device_id)) == RECORDS

    assert held_on_device(paths) == RECORDS
    acked = cli("agent", "bundle", "import", "--data", paths.root, to_device)
    assert acked.returncode == 0, acked.stderr
    assert f"results {RECORDS}" in acked.stdout
    assert held_on_device(paths) == 0
    replay = cli("agent", "bundle", "import", "--data", paths.root, to_device)
    assert replay.returncode == 2
    assert "imported here already" in replay.stderr

    empty = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "empty")
    assert "results" not in empty.stdout.splitlines()[0], empty.stdout
    assert agent.process.poll() is None  # the agent ran throughout


async def test_bundles_and_mqtt_converge_without_doubling(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """A link that comes and goes: records leave partly by bundle, partly over MQTT; an
    old bundle imported after newer MQTT traffic stores nothing; every record is at the
    hub exactly once and the device ends holding none."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, 60)
        old = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "old")
        assert old.returncode == 0, old.stderr
        await produce(client, 61, 40)
        proxy.up()  # the link comes back: all 100 go over MQTT

        async def all_over_mqtt() -> bool:
            return len(hub_records(hub, device_id)) == 100 and held_on_device(paths) == 0

        await eventually(all_over_mqtt, timeout=60, what="the records over MQTT")
        proxy.down()
        await produce(client, 101, 30)  # while down again
        late = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "old")
        assert late.returncode == 0, late.stdout + late.stderr
        # The old bundle was numbered before the device knew the hub's marks (MQTT told
        # it since): the hub cannot tell its records from a successor store's, and takes
        # none. They are all held already.
        assert "0 new records; results, events not taken" in late.stdout
        fresh = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "new")
        # The 30 results, and whatever events the cut itself recorded (link.lost ...).
        assert "(results 30" in fresh.stdout, fresh.stdout
        imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "new",
                       "--ack-out", tmp_path / "ack")  # fmt: skip
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert len(hub_records(hub, device_id)) == 130
        proxy.up()  # MQTT resends what the ack bundle has not deleted yet: duplicates only
        acked = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "ack")
        assert acked.returncode == 0, acked.stderr

        async def converged() -> bool:
            return held_on_device(paths) == 0

        await eventually(converged, timeout=60, what="the device holding nothing")
    finally:
        await client.close()
    held = hub_records(hub, device_id)
    assert [body["n"] for _, body in held] == list(range(1, 131))
    assert agent.process.poll() is None


async def test_a_first_bundle_then_the_link_keeps_the_stores_numbers(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """A fresh store's first records reach the hub by bundle (the hub takes that store's
    numbering), then the link comes up before any ack bundle is carried back: the hub's
    answer to the hello says it numbers as this store does, so the device keeps its
    numbers instead of moving them after the hub's mark and sending them again."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, 35)
        out = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "first")
        assert out.returncode == 0, out.stderr
        imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "first")
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert len(hub_records(hub, device_id)) == 35
        await produce(client, 36, 5)
        proxy.up()  # the ack never travels: the hello's answer is all the device learns

        async def drained() -> bool:
            return held_on_device(paths) == 0 and len(hub_records(hub, device_id)) >= 40

        await eventually(drained, timeout=60, what="the device's records over MQTT")
    finally:
        await client.close()
    held = hub_records(hub, device_id)
    assert [body["n"] for _, body in held] == list(range(1, 41))  # each once, in order
    assert agent.process.poll() is None


async def test_tasks_travel_by_bundle_leased_for_the_round_trip(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """The hub learns what the device runs from its first bundle, leases it queued tasks
    in its next bundle (accepted from then on, for the stated round trip), the device
    runs them with no link, and their results come back in its next bundle: each task
    ends once, succeeded."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    first = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "1")
    assert first.returncode == 0, first.stderr
    learned = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "1")
    assert learned.returncode == 0, learned.stdout + learned.stderr
    device = await hub.parts.store.device(device_id)
    assert device is not None
    assert {m["name"] for m in device.models} == {"surface-defect", VIB}

    operator = await api.token("operator")
    task = {"model": VIB, "input": INPUT, "dtype": "int8", "target": {"device": device_id}}
    submitted = await api.call("POST", "/api/v1/tasks", token=operator, body={"tasks": [task] * 3})
    assert submitted.status == 202, submitted.body
    ids = submitted.body["ids"]

    out = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
              "--to", tmp_path / "to-site", "--lease", "3d")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(3 tasks leased)" in out.stdout
    for task_id in ids:
        held = await hub.parts.store.task(task_id)
        assert held is not None
        assert (held.state, held.device_id) == ("accepted", device_id)
    again = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
                "--to", tmp_path / "again")  # fmt: skip
    assert "tasks leased" not in again.stdout  # leased once

    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "to-site")
    assert applied.returncode == 0, applied.stderr
    assert "3 tasks leased for 3 days" in applied.stdout

    local = LocalClient(paths.socket)
    try:

        async def ran() -> bool:
            return bool((await local.status())["tasks"]["done"] == 3)

        await eventually(ran, timeout=60, what="the leased tasks run on the device")
    finally:
        await local.close()
    back = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "back")
    assert back.returncode == 0, back.stderr
    results = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "back")
    assert results.returncode == 0, results.stdout + results.stderr
    assert "tasks accepted 3" in results.stdout
    for task_id in ids:
        ended = await hub.parts.store.task(task_id)
        assert ended is not None
        assert ended.state == "succeeded"
    assert agent.process.poll() is None


async def test_a_model_rolls_out_by_bundle(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """A roll-out reaches a device with no link: its bundle carries the signed release
    and the model file it lacks; the device checks and activates it as after a
    download, and its next bundle tells the hub, which completes the roll-out."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    first = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "1")
    assert first.returncode == 0, first.stderr
    assert cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "1").returncode == 0

    admin = await api.token("admin")
    folder = next(Path(f) for f in SHIPPED_MODELS if f"/{VIB}/" in f"{f}/")
    model, manifest, sample = bundle_parts(folder, version="1.1.0")
    assert (await upload(hub, admin, model, manifest, sample)).status == 201
    started = await api.call(
        "POST", "/api/v1/rollouts", token=admin,
        body={"model": VIB, "version": "1.1.0", "selector": {}, "canary_share": 1.0},
    )  # fmt: skip
    assert started.status == 201, started.body

    out = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
              "--to", tmp_path / "to-site")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "to-site")
    assert applied.returncode == 0, applied.stderr
    assert f"model {VIB} 1.1.0 carried" in applied.stdout

    local = LocalClient(paths.socket)
    try:

        async def active() -> bool:
            models = (await local.models())["models"]
            return any(m["name"] == VIB and m["version"] == "1.1.0" for m in models)

        await eventually(active, timeout=60, what="1.1.0 active on the device")
    finally:
        await local.close()
    back = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "back")
    assert back.returncode == 0, back.stderr
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "back")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    reply = await api.call("GET", f"/api/v1/rollouts/{started.body['id']}", token=admin)
    assert reply.body["state"] == "completed", reply.body
    assert reply.body["counts"] == {"active": 1}
    assert agent.process.poll() is None


async def test_a_large_backlog_goes_in_bundles_of_max_records(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """--max-records bounds a bundle (and the device's memory while it is made); the
    rest goes in the next bundle, once this one's ack is imported."""
    paths, device_id, _, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, 50)
    finally:
        await client.close()
    for trip in range(1, 4):
        out = cli("agent", "bundle", "export", "--data", paths.root, "--to",
                  tmp_path / f"out{trip}", "--max-records", "20")  # fmt: skip
        assert out.returncode == 0, out.stderr
        if trip < 3:
            assert "exported 20 records" in out.stdout
            assert "more records wait beyond these 20" in out.stdout
        imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / f"out{trip}",
                       "--ack-out", tmp_path / f"ack{trip}")  # fmt: skip
        assert imported.returncode == 0, imported.stdout + imported.stderr
        acked = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / f"ack{trip}")
        assert acked.returncode == 0, acked.stderr
    assert [body["n"] for _, body in hub_records(hub, device_id)] == list(range(1, 51))
    assert held_on_device(paths) == 0
    bad = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "x",
              "--max-records", "0")  # fmt: skip
    assert bad.returncode == 2
    assert "--max-records must be at least 1" in bad.stderr


async def test_a_hub_restored_from_an_older_backup_takes_the_rest_after_a_gap(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """The device deleted what the hub acknowledged; the hub then lost its latest state
    (restored from a backup). The next bundle starts past the hub's mark: refused as a
    gap, the ack says so, and the device's next bundle covers from the hub's mark: the
    hub takes the records the device still holds, and moves past the lost ones."""
    paths, device_id, _, client = await offline_agent(enroll_device, agents, proxy)
    try:
        await produce(client, 1, 30)
        assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
                   tmp_path / "1").returncode == 0  # fmt: skip
        assert cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "1",
                   "--ack-out", tmp_path / "ack1").returncode == 0  # fmt: skip
        assert cli("agent", "bundle", "import", "--data", paths.root,
                   tmp_path / "ack1").returncode == 0  # fmt: skip
        # The backup: the hub forgets results 21-30 (the device no longer has them).
        database = hub.config.database(hub.paths.database)
        hub_sql(database, "DELETE FROM records WHERE device_id = ? AND stream = 'results' "
                "AND seq > 20", (device_id,))  # fmt: skip
        hub_sql(database, "UPDATE stream_marks SET hwm = 20 WHERE device_id = ? AND "
                "stream = 'results'", (device_id,))  # fmt: skip
        await produce(client, 31, 10)
    finally:
        await client.close()
    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "2").returncode == 0  # fmt: skip
    gap = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "2",
              "--ack-out", tmp_path / "ack2")  # fmt: skip
    assert "results not taken: they start past what the hub holds" in gap.stdout, gap.stdout
    assert cli("agent", "bundle", "import", "--data", paths.root,
               tmp_path / "ack2").returncode == 0  # fmt: skip
    assert held_on_device(paths) == 10  # nothing deleted: the hub holds none of them

    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "3").returncode == 0  # fmt: skip
    taken = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "3",
                "--ack-out", tmp_path / "ack3")  # fmt: skip
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert [body["n"] for _, body in hub_records(hub, device_id)] == [
        *range(1, 21),
        *range(31, 41),
    ]  # 21-30 were lost with the hub's state; the rest, once each
    assert cli("agent", "bundle", "import", "--data", paths.root,
               tmp_path / "ack3").returncode == 0  # fmt: skip
    assert held_on_device(paths) == 0


async def test_a_task_leased_by_bundle_ends_once_when_its_result_also_comes_over_mqtt(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,
    tmp_path: Path,
) -> None:
    """Mixed paths: tasks leased by bundle, their results sent over MQTT once the link
    comes back, and then also carried in a bundle made before: each task ends once."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "1").returncode == 0  # fmt: skip
    assert cli("hub", "bundle", "import", "--data", hub.paths.root,
               tmp_path / "1").returncode == 0  # fmt: skip
    operator = await api.token("operator")
    task = {"model": VIB, "input": INPUT, "dtype": "int8", "target": {"device": device_id}}
    submitted = await api.call("POST", "/api/v1/tasks", token=operator, body={"tasks": [task] * 2})
    assert submitted.status == 202, submitted.body
    assert cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
               "--to", tmp_path / "to-site").returncode == 0  # fmt: skip
    assert cli("agent", "bundle", "import", "--data", paths.root,
               tmp_path / "to-site").returncode == 0  # fmt: skip
    local = LocalClient(paths.socket)
    try:

        async def ran() -> bool:
            return bool((await local.status())["tasks"]["done"] == 2)

        await eventually(ran, timeout=60, what="the leased tasks run")
    finally:
        await local.close()
    carried = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "late")
    assert carried.returncode == 0, carried.stderr
    proxy.up()  # the link comes back: the results go over MQTT first

    async def ended() -> bool:
        found = [await hub.parts.store.task(i) for i in submitted.body["ids"]]
        return all(t is not None and t.state == "succeeded" for t in found)

    await eventually(ended, timeout=60, what="the tasks ended over MQTT")
    late = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "late")
    assert late.returncode == 0, late.stdout + late.stderr
    assert "tasks" not in late.stdout.split(": imported: ", 1)[1]  # no result taken again
    for task_id in submitted.body["ids"]:
        ended_task = await hub.parts.store.task(task_id)
        assert ended_task is not None
        assert (ended_task.state, ended_task.attempt) == ("succeeded", 1)
    assert agent.process.poll() is None
