"""Failover: three hub replicas on one PostgreSQL behind one Mosquitto, real agents, and
`kill -9` of a replica every 5-10 s (restarted after a moment); once, the leader is killed
for good. The soak checker then proves nothing was lost or doubled: every record an agent
confirmed is at the hub exactly once, every task ended exactly once and never by a stale
attempt's result, no device's applied policy version went backwards, and the roll-out
started mid-run completed. How long the fleet went without a leader after each leader
kill is printed.

The replicas are separate processes with separate data folders holding copies of one
PKI (as pods mounting one Secret); devices and the test reach their web APIs through a
TCP balancer (as through a Kubernetes Service). `OUTPOST_FAILOVER_S` sets the time
under faults (default 30 s), `OUTPOST_SOAK_SEED` the seed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from tests.balancer import Balancer
from tests.databases import hub_sql
from tests.integration.test_store_forward import write_agent_settings
from tests.model_upload import bundle_parts
from tests.replicaset import Replica, current_leader, fleet_broker, replica_folder
from tests.soak import (
    SAMPLE,
    TERMINAL,
    Api,
    Device,
    Ledger,
    check_tasks,
    doubled_records,
    hub_cli,
    missing_records,
    produce,
    read_applied_policy,
    submit_tasks,
    task_states,
    watch_policy,
)
from tests.support import PROFILES, SHIPPED_MODELS, eventually

FAILOVER_S = float(os.environ.get("OUTPOST_FAILOVER_S", "30"))
SEED = os.environ.get("OUTPOST_SOAK_SEED", "20261203")
REPLICAS = ("r1", "r2", "r3")
AGENTS = 10


@dataclass
class Faults:
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    leaderless_s: list[float] = field(default_factory=list)  # one per leader kill
    restarts: list[asyncio.Task[None]] = field(default_factory=list)


async def _await_takeover(database: str, holder: str, epoch: int, faults: Faults) -> None:
    """After the leader `holder` was killed: wait until another lease is granted."""
    killed = time.monotonic()

    async def taken_over() -> bool:
        _, now = await asyncio.to_thread(current_leader, database)
        return now > epoch

    await eventually(taken_over, timeout=60, every=0.05, what=f"a leader after {holder}")
    faults.leaderless_s.append(time.monotonic() - killed)


async def _inject(
    replicas: list[Replica],
    database: str,
    faults: Faults,
    rng: random.Random,
    until: float,
) -> Replica:
    """Kill -9 a replica every 5-10 s and restart it; once, the leader for good. Returns
    the replica killed for good."""
    gone: Replica | None = None
    while time.monotonic() < until or gone is None:
        await asyncio.sleep(rng.uniform(5, 10))  # the fault's timing, on purpose
        holder, epoch = await asyncio.to_thread(current_leader, database)
        live = [r for r in replicas if r.alive()]
        leader = next((r for r in live if holder.startswith(f"{r.holder}@")), None)
        if gone is None and leader is not None and (time.monotonic() > until - FAILOVER_S / 2):
            gone = leader
            leader.kill()
            faults.kills["leader, for good"] += 1
            await _await_takeover(database, holder, epoch, faults)
            continue
        victim = rng.choice(live)
        victim.kill()
        faults.kills["leader" if victim is leader else "follower"] += 1

        async def restart(victim: Replica = victim) -> None:
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # the fault's timing, on purpose
            await victim.start()

        faults.restarts.append(asyncio.create_task(restart()))
        if victim is leader:
            await _await_takeover(database, holder, epoch, faults)
    return gone


@pytest.mark.slow
@pytest.mark.timeout(int(FAILOVER_S) * 3 + 420)
async def test_replicas_fail_over_and_lose_or_double_nothing(tmp_path: Path, pg_url: str) -> None:
    rng = random.Random(SEED)
    primary, broker, broker_port = await fleet_broker(tmp_path / "pki-source", REPLICAS)
    balancer_ports: list[int] = []
    balancer = Balancer(balancer_ports)
    settings = (
        f"public_url = {json.dumps(balancer.url)}\n"
        f'broker = "mqtts://127.0.0.1:{broker_port}"\n'
        f"db_url = {json.dumps(pg_url)}\n"
        "offline_after_heartbeats = 3\n"
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\ntask_accept_timeout_s = 5\n"
    )
    replicas = [
        Replica(r, replica_folder(primary, tmp_path / r, r, settings), tmp_path) for r in REPLICAS
    ]
    balancer_ports.extend(r.web_port for r in replicas)
    await balancer.start()
    devices: list[Device] = []
    ledger, faults = Ledger(), Faults()
    stop = asyncio.Event()
    workers: list[asyncio.Task[None]] = []
    api: Api | None = None
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        first = replicas[0].paths.root
        admin = hub_cli(
            "hub.cli", "token", "create", "--data", str(first), "--role", "admin", "--api-key"
        )
        api = Api(balancer.url, primary.ca_cert, admin)
        for index in range(AGENTS):
            token = hub_cli("hub.cli", "enroll-token", "--data", str(first), "--label", "site=mill")
            device_paths = DevicePaths(tmp_path / f"device-{index}")
            identity = await enroll(token, device_paths, PROFILES / "generic.toml")
            ModelDirectory(device_paths.models).install(SHIPPED_MODELS[0])
            write_agent_settings(
                device_paths, "[agent.sync]\nbatch_records = 50\nack_timeout_s = 2\n"
            )
            device = Device(index, device_paths, identity.device_id, tmp_path, 1.0)
            device.start()
            devices.append(device)
        for device in devices:

            async def listening(device: Device = device) -> bool:
                return device.paths.socket.exists()

            await eventually(listening, timeout=30, what="the agents' local APIs")

        model, manifest, sample = bundle_parts(SHIPPED_MODELS[0], version="1.1.0")
        assert await api.upload(model, manifest, sample) == 201
        started = time.monotonic()
        workers = [
            *(asyncio.create_task(produce(d, ledger, stop, pause=0.2)) for d in devices),
            asyncio.create_task(submit_tasks(api, ledger, stop)),
            asyncio.create_task(watch_policy(api, devices, ledger, stop)),
        ]
        rollout = {"model": "vibration-anomaly", "version": "1.1.0",
                   "selector": {"site": "mill"}, "canary_share": 0.2}  # fmt: skip
        status, body = await api.call("POST", "/api/v1/rollouts", rollout)
        assert status == 201, body
        rollout_id = body["id"]
        gone = await _inject(replicas, pg_url, faults, rng, started + FAILOVER_S)
        stop.set()
        await asyncio.gather(*workers, *faults.restarts)
        for replica in replicas:
            if replica is not gone and not replica.alive():
                await replica.start()
        healed = time.monotonic()

        async def drained() -> bool:
            missing = await asyncio.to_thread(missing_records, pg_url, ledger)
            return not any(missing.values())

        await eventually(drained, timeout=120, every=1.0, what="every confirmed record stored")
        drain_s = time.monotonic() - healed

        async def ended() -> bool:
            states = await asyncio.to_thread(task_states, pg_url, ledger.tasks)
            return all(s in TERMINAL for s in states.values())

        await eventually(ended, timeout=90, every=1.0, what="every task ended")

        async def completed() -> dict[str, object]:
            status, body = await api.call("GET", f"/api/v1/rollouts/{rollout_id}")
            return body if status == 200 and body["state"] == "completed" else {}

        done = await eventually(completed, timeout=120, every=1.0, what="the roll-out completed")
        await read_applied_policy(api, devices, ledger)  # a last reading, healed
    finally:
        stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, *faults.restarts, return_exceptions=True)
        if api is not None:
            await api.close()
        for device in devices:
            device.kill()
        for replica in replicas:
            replica.kill()
        await balancer.close()
        await broker.stop()

    anomalies = [
        f"{d}: {len(ids)} confirmed records missing"
        for d, ids in missing_records(pg_url, ledger).items()
        if ids
    ]
    anomalies += doubled_records(pg_url)
    anomalies += check_tasks(pg_url, ledger.tasks)
    anomalies += ledger.policy_backwards()
    records = sum(len(c) for c in ledger.confirmed.values())
    states = collections.Counter(task_states(pg_url, ledger.tasks).values())
    print(
        f"\nreplica failover: {FAILOVER_S:.0f} s under faults, seed {SEED}, "
        f"{len(replicas)} replicas, {len(devices)} agents\n"
        f"  kills: {dict(faults.kills)}; without a leader after each leader kill: "
        f"{', '.join(f'{s:.2f} s' for s in faults.leaderless_s)}\n"
        f"  records: {records} confirmed, at the hub exactly once; "
        f"drain after heal {drain_s:.1f} s\n"
        f"  tasks: {len(ledger.tasks)} submitted, ended {dict(states)}\n"
        f"  policy: {ledger.policy_writes} layer writes, "
        f"{sum(len(v) for v in ledger.policy_seen.values())} applied versions read\n"
        f"  roll-out {rollout_id}: {done['state']} {done['counts']}; anomalies: {len(anomalies)}"
    )
    assert not anomalies, "\n".join(anomalies[:30])
    assert faults.kills["leader, for good"] == 1
    assert len(faults.leaderless_s) >= 1  # every leader kill was followed by a takeover
    assert done["counts"] == {"active": AGENTS}
    assert len(ledger.tasks) > 0
    assert records > 0


def _held_twice(database: str, ids: list[str]) -> list[str]:
    """Tasks some attempt of which was assigned twice (two devices holding one task), or
    whose attempts were not assigned in growing order."""
    trails: dict[str, list[int]] = collections.defaultdict(list)
    for task_id, attempt in hub_sql(
        database, "SELECT task_id, attempt FROM task_events WHERE state = 'assigned' ORDER BY id"
    ):
        trails[task_id].append(int(attempt))
    return [
        f"task {t}: assigned attempts {trails[t]}"
        for t in ids
        if trails[t] != sorted(set(trails[t]))
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_replicas_both_allocating_never_give_one_task_to_two_devices(
    tmp_path: Path, pg_url: str
) -> None:
    """1,000 tasks through both replicas' APIs at once, with leader election off so both
    run allocation passes: the database, not the leader, keeps every task held once."""
    primary, broker, broker_port = await fleet_broker(tmp_path / "pki-source", ("a", "b"))
    settings = (
        f'broker = "mqtts://127.0.0.1:{broker_port}"\n'
        f"db_url = {json.dumps(pg_url)}\n"
        "elect_leader = false\n"
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"
    )
    replicas = [
        Replica(r, replica_folder(primary, tmp_path / r, r, settings), tmp_path) for r in "ab"
    ]
    devices: list[Device] = []
    apis: list[Api] = []
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        for replica in replicas:
            admin = hub_cli("hub.cli", "token", "create", "--data", str(replica.paths.root),
                            "--role", "admin", "--api-key")  # fmt: skip
            apis.append(Api(f"https://127.0.0.1:{replica.web_port}", primary.ca_cert, admin))
        for index in range(4):
            token = hub_cli(
                "hub.cli", "enroll-token", "--data", str(replicas[index % 2].paths.root)
            )
            device_paths = DevicePaths(tmp_path / f"device-{index}")
            identity = await enroll(token, device_paths, PROFILES / "x86-gateway.toml")
            ModelDirectory(device_paths.models).install(SHIPPED_MODELS[0])
            device = Device(index, device_paths, identity.device_id, tmp_path)
            device.start()
            devices.append(device)

        async def all_online() -> bool:
            status, body = await apis[0].call("GET", "/api/v1/devices?online=true")
            return status == 200 and len(body["items"]) == len(devices)

        await eventually(all_online, timeout=60, what="every device online")
        assert SAMPLE is not None
        task = {"model": "vibration-anomaly", "input": SAMPLE.input, "dtype": "int8"}

        async def submit(api: Api) -> list[str]:
            ids: list[str] = []
            for _ in range(5):  # 4 submitters x 5 x 50
                status, body = await api.call("POST", "/api/v1/tasks", {"tasks": [task] * 50})
                assert status == 202, body
                ids += body["ids"]
            return ids

        batches = await asyncio.gather(
            submit(apis[0]), submit(apis[1]), submit(apis[0]), submit(apis[1])
        )
        ids = [i for batch in batches for i in batch]

        async def ended() -> bool:
            states = await asyncio.to_thread(task_states, pg_url, ids)
            return all(s in TERMINAL for s in states.values())

        await eventually(ended, timeout=180, every=1.0, what="1,000 tasks ended")
        expositions = [await api.text("/metrics") for api in apis]
        assigned = [_metric(text, "outpost_hub_tasks_assigned_total") for text in expositions]
        conflicts = [_metric(text, "outpost_hub_db_conflicts_total") for text in expositions]
        up = 'outpost_hub_broker_link{state="connected"}'
        links = [_metric(text, up) for text in expositions]
        healths = [(await api.call("GET", "/api/v1/health"))[1] for api in apis]
    finally:
        for api in apis:
            await api.close()
        for device in devices:
            device.kill()
        for replica in replicas:
            replica.kill()
        await broker.stop()

    assert len(ids) == 1000
    assert collections.Counter(task_states(pg_url, ids).values()) == {"succeeded": 1000}
    anomalies = _held_twice(pg_url, ids) + check_tasks(pg_url, ids)
    assert not anomalies, "\n".join(anomalies[:30])
    # Both replicas allocated (else there was no race).
    assert all(n > 0 for n in assigned), assigned
    # Both listed by the broker's ACL, their links up (hub/mqtt/listing.py).
    assert links == [1.0, 1.0]
    assert [h["broker_link"] for h in healths] == ["connected", "connected"], healths
    print(
        f"\ntwo replicas allocating at once: assignments per replica {assigned}, "
        f"units of work retried after a conflict {conflicts}"
    )


def _metric(exposition: str, name: str) -> float:
    return next(
        float(line.split()[-1]) for line in exposition.splitlines() if line.startswith(name + " ")
    )
