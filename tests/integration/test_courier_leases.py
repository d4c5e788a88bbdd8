"""Tasks leased by courier bundle, at the hub: `bundle export` leases nothing to a device
that is online over MQTT unless it is named (it would never see the bundle, and its
tasks would wait out the lease), and a result that comes back after its lease ran out
counts as late, even when no allocation pass ran meanwhile (the hub was stopped)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import msgspec

from hub.store import courier as registry
from hub.store.sql import Sql
from hub.store.tasks import NewTask
from outpost import wire
from outpost.courier import sealing
from tests.courier_rig import DAY, Rig, Site, bundle, enroll, records, rig, task_result
from tests.support import REPO


def new_task(task_id: str, now: float, target: dict[str, str] | None = None) -> NewTask:
    return NewTask(
        task_id=task_id,
        model="m",
        version="",
        input=msgspec.msgpack.encode([1]),
        dtype="int8",
        priority=0,
        deadline=now + 30 * DAY,
        lease_s=60,
        target=target or {},
        submitted_by="test",
    )


async def serving(r: Rig, site: Site, *, online: bool) -> None:
    """The device serves model m, the hub knows its key, and it is online or not."""

    def update(db: Sql) -> None:
        with db.write():
            db.execute(
                "UPDATE devices SET online = ?, last_seen = ?, models = ? WHERE device_id = ?",
                (
                    int(online),
                    time.time(),
                    '[{"name": "m", "version": "1", "state": "ready"}]',
                    site.device_id,
                ),
            )

    await r.store.run(update)
    await r.store.run(
        registry.remember_key, site.device_id, sealing.public_pem(site.key.public_key()).decode()
    )


def hub_cli(r: Rig, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *map(str, args), "--data", str(r.paths.root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


async def test_export_for_every_device_leases_nothing_to_one_online_over_mqtt(
    tmp_path: Path,
) -> None:
    with rig(tmp_path) as r:
        online = await enroll(r, "dev-online001")
        offline = await enroll(r, "dev-offline01")
        await serving(r, online, online=True)
        await serving(r, offline, online=False)
        now = time.time()
        tasks = [new_task(f"on-{n}", now, {"device": online.device_id}) for n in range(2)]
        tasks += [new_task(f"off-{n}", now, {"device": offline.device_id}) for n in range(2)]
        await r.store.create_tasks(tasks, now=now)

        everyone = hub_cli(r, "bundle", "export", "--to", tmp_path / "all")
        assert everyone.returncode == 0, everyone.stdout + everyone.stderr
        assert f"{online.device_id} (online over MQTT now: no tasks leased" in everyone.stdout
        assert f"{offline.device_id} (2 tasks leased)" in everyone.stdout
        states = {t.task_id: t.state for t in [await r.store.task(t.task_id) for t in tasks] if t}
        assert states == {
            "on-0": "queued",
            "on-1": "queued",
            "off-0": "accepted",
            "off-1": "accepted",
        }

        named = hub_cli(r, "bundle", "export", "--to", tmp_path / "named",
                        "--device", online.device_id)  # fmt: skip
        assert named.returncode == 0, named.stdout + named.stderr
        assert f"{online.device_id} (2 tasks leased)" in named.stdout
        for task_id in ("on-0", "on-1"):
            task = await r.store.task(task_id)
            assert task is not None
            assert (task.state, task.device_id) == ("accepted", online.device_id)


async def test_a_result_after_its_courier_lease_lapsed_counts_as_late(tmp_path: Path) -> None:
    """The hub was stopped while the stick travelled: no allocation pass put the task
    back when its lease ran out. The import does, then the result is late."""
    t0 = time.time() - 10 * DAY
    with rig(tmp_path) as r:
        site = await enroll(r, "dev-site00002", now=t0 - 120)
        await r.store.create_tasks([new_task("t-1", t0)], now=t0 - 60)
        models = [wire.ModelInfo(name="m", version="1", sha256="", state="ready")]
        first = bundle(r, site, [records("events", [1])], created_at=t0 - 60, models=models)
        leased = await r.desk.importer.import_bundle(first, now=t0)  # leased for 7 days
        assert leased.tasks_leased == 1

        later = t0 + 8 * DAY
        result = [records("results", [1], bodies=[task_result("t-1", 1)])]
        second = bundle(r, site, result, created_at=later - 60)
        outcome = await r.desk.importer.import_bundle(second, now=later, answer=False)
        assert dict(outcome.task_results) == {"late": 1}
        task = await r.store.task("t-1")
        assert task is not None
        assert task.state == "queued"  # for another device
        states = [e.state for e in task.events]
        assert states[-2:] == ["lapsed", "late"], states


async def test_a_result_within_its_courier_lease_is_accepted(tmp_path: Path) -> None:
    t0 = time.time() - 5 * DAY
    with rig(tmp_path) as r:
        site = await enroll(r, "dev-site00003", now=t0 - 120)
        await r.store.create_tasks([new_task("t-1", t0)], now=t0 - 60)
        models = [wire.ModelInfo(name="m", version="1", sha256="", state="ready")]
        first = bundle(r, site, [records("events", [1])], created_at=t0 - 60, models=models)
        assert (await r.desk.importer.import_bundle(first, now=t0)).tasks_leased == 1
        result = [records("results", [1], bodies=[task_result("t-1", 1)])]
        outcome = await r.desk.importer.import_bundle(bundle(r, site, result), answer=False)
        assert dict(outcome.task_results) == {"accepted": 1}
        task = await r.store.task("t-1")
        assert task is not None
        assert task.state == "succeeded"
