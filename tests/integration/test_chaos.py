"""A chaos soak after Jepsen's method: a hub and several agents, all real processes, run
while a fault injector (by pid only) kills, pauses, fills and corrupts; a checker then
proves what was promised.

Faults: `kill -9` of an agent, of the hub and of its Mosquitto (each then restarted, the
broker by the hub's own supervisor); SIGSTOP/SIGCONT of an agent or the hub; a results
stream filled past its bound; a store file corrupted while its agent is down, and once a
byte of a WAL frame header flipped while its agent is down (SQLite then silently drops
the commits from that frame on). (A clock jump is not injected: the agent has no time
hook and libfaketime is not installed.)

After a drain deadline the checker proves: every record an agent confirmed is at the hub
exactly once (except those declared lost with a store found damaged: the agent moves it
aside, logs it and reports it to the hub as an event, and the checker counts them); every
task ended in exactly one terminal state; no result of a stale attempt (the fencing token)
ended a task; the policy version a device reports applied never went backwards;
`PRAGMA integrity_check` is ok on every store.

`OUTPOST_SOAK_S` sets the least time under faults (default 45 s; the soak also goes on
until `SOAK_S / 4` faults and each once-per-run fault happened, however slow the machine);
`OUTPOST_SOAK_SEED` the seed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import aiohttp
import msgpack
import pytest

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.store.recovery import EVENT as SET_ASIDE_EVENT
from hub.initialise import initialise
from hub.paths import HubPaths
from tests import wal_frames
from tests.integration.test_store_forward import write_agent_settings
from tests.local_api import LocalClient
from tests.soak import (
    TERMINAL,
    Api,
    Device,
    HubProcess,
    Ledger,
    check_tasks,
    hub_cli,
    hub_ids,
    produce,
    read_applied_policy,
    submit_tasks,
    task_states,
    watch_policy,
)
from tests.support import PROFILES, SHIPPED_MODELS, eventually, free_port

SOAK_S = float(os.environ.get("OUTPOST_SOAK_S", "30"))
SEED = os.environ.get("OUTPOST_SOAK_SEED", "20261126")
AGENTS = 3
FULL_AGENT = 0  # its results stream is bounded small: the "store full" fault fills it
FULL_BOUND = 300
CORRUPT_AGENT = AGENTS - 1  # its store is corrupted while it is down (once per run)
WAL_AGENT = 1  # a WAL frame header of its store is flipped while it is down (once per run)
MIN_FAULTS = int(SOAK_S / 4)


def _set_aside_events(database: Path) -> collections.Counter[str]:
    """Per device, how many stores it reported set aside (events at the hub)."""
    reported: collections.Counter[str] = collections.Counter()
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        for device_id, body in db.execute(
            "SELECT device_id, body FROM records WHERE stream = 'events'"
        ):
            event = msgpack.unpackb(body)
            if isinstance(event, dict) and event.get("event") == SET_ASIDE_EVENT:
                reported[device_id] += 1
    return reported


def _corrupt(path: Path) -> None:
    """Overwrite the b-tree header of the schema page: the file no longer opens as sound.

    The WAL is checkpointed first: a newer copy of the page in the WAL would otherwise
    mask the damage (SQLite reads the WAL's copy, and the next checkpoint overwrites it)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.seek(100)
        f.write(os.urandom(24))


def _flip_wal(path: Path, rng: random.Random) -> bool:
    """Flip a byte of a random WAL frame's header; False if the WAL holds no frame."""
    wal = Path(f"{path}-wal")
    frames = wal_frames.frame_count(wal)[0] if wal.exists() and wal.stat().st_size else 0
    if not frames:
        return False
    wal_frames.flip_frame_header(wal, rng.randrange(frames))
    return True


async def _inject(
    hub: HubProcess, devices: list[Device], ledger: Ledger, rng: random.Random, until: float
) -> None:
    """Inject faults until `until` and until `MIN_FAULTS` faults and each once-per-run
    fault happened: a slow machine runs longer, never fewer faults."""
    kinds = ["kill_agent", "kill_hub", "kill_broker", "pause_agent", "pause_hub", "fill_store"]
    once = {"corrupt_store", "corrupt_wal"}
    while time.monotonic() < until or sum(ledger.faults.values()) < MIN_FAULTS or once:
        await asyncio.sleep(rng.uniform(1.0, 3.0))  # the fault's timing, on purpose
        kind = rng.choice([*kinds, *sorted(once)])
        if kind == "kill_agent":
            device = rng.choice(devices)
            device.kill()
            await asyncio.sleep(rng.uniform(0, 1.0))  # the fault's timing, on purpose
            device.start()
        elif kind == "corrupt_store":
            once.discard(kind)
            device = devices[CORRUPT_AGENT]
            device.kill()
            # What the hub does not hold yet may go with the damaged file.
            held = hub_ids(hub.paths.database)[device.device_id]
            ledger.at_risk[device.device_id] |= ledger.confirmed[device.device_id] - set(held)
            _corrupt(device.paths.root / "store.db")
            device.start()
        elif kind == "corrupt_wal":
            device = devices[WAL_AGENT]
            device.kill()  # kill -9: the commits stay in the WAL
            held = hub_ids(hub.paths.database)[device.device_id]
            at_risk = ledger.confirmed[device.device_id] - set(held)
            flipped = _flip_wal(device.paths.root / "store.db", rng)
            device.start()
            if not flipped:
                continue  # nothing in the WAL (just checkpointed): try again later
            once.discard(kind)
            ledger.at_risk[device.device_id] |= at_risk
        elif kind == "kill_hub":
            os.kill(hub.pid, signal.SIGKILL)
            assert hub.process is not None
            hub.process.wait(10)
            await asyncio.sleep(rng.uniform(0, 1.0))  # the fault's timing, on purpose
            await hub.start()
        elif kind == "kill_broker":
            pid = hub.broker_pid()
            if pid is None:
                continue
            os.kill(pid, signal.SIGKILL)
        elif kind == "pause_agent":
            device = rng.choice(devices)
            if device.agent is None:
                continue
            device.agent.signal(signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(0.5, 3.0))  # the fault's timing, on purpose
            device.agent.signal(signal.SIGCONT)
        elif kind == "pause_hub":
            os.kill(hub.pid, signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(0.5, 3.0))  # the fault's timing, on purpose
            os.kill(hub.pid, signal.SIGCONT)
        elif kind == "fill_store":
            # Overfill the small stream at once: it must refuse with the reason, never
            # take more than its bound, never corrupt.
            client = LocalClient(devices[FULL_AGENT].paths.socket)
            try:
                status, body = await client.append(
                    "results", [{"soak": uuid.uuid4().hex} for _ in range(FULL_BOUND + 1)]
                )
                assert status == 507, body
                assert "stream is full" in body["error"]["message"], body
                ledger.refused[body["error"]["code"]] += 1
            except (aiohttp.ClientError, OSError):
                continue
            finally:
                await client.close()
        ledger.faults[kind] += 1


def _integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
    return str(verdict)


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_S) * 3 + 300)
async def test_chaos_soak(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    paths.config.write_text(
        "[hub]\n"
        f"mqtt_port = {free_port()}\n"
        f"web_port = {free_port()}\n"
        "offline_after_heartbeats = 3\n"
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\ntask_accept_timeout_s = 5\n"
    )
    hub = HubProcess(paths, tmp_path)
    await hub.start()
    admin = hub_cli("hub.cli", "token", "create", "--data", str(paths.root), "--role", "admin",
                 "--api-key")  # fmt: skip
    api = Api(hub.config.hub_url, paths.ca_cert, admin)
    devices: list[Device] = []
    ledger = Ledger()
    stop = asyncio.Event()
    workers: list[asyncio.Task[None]] = []
    try:
        for index in range(AGENTS):
            token = hub_cli("hub.cli", "enroll-token", "--data", str(paths.root))
            device_paths = DevicePaths(tmp_path / f"device-{index}")
            identity = await enroll(token, device_paths, PROFILES / "generic.toml")
            models = ModelDirectory(device_paths.models)
            for folder in SHIPPED_MODELS:
                models.install(folder)
            bounds = (
                f"[agent.bounds.results]\nmax_records = {FULL_BOUND}\n"
                if index == FULL_AGENT
                else ""
            )
            # Retries capped at 5 s: the default back-off (up to 60 s) could leave an agent
            # waiting out most of the drain's deadline after the last fault; how a fleet
            # spreads its return is tested elsewhere, this is about what it loses.
            write_agent_settings(
                device_paths,
                "reconnect_max_delay = 5\nreconnect_spread_s = 1\n"
                "[agent.sync]\nbatch_records = 50\nack_timeout_s = 2\n" + bounds,
            )
            device = Device(index, device_paths, identity.device_id, tmp_path)
            device.start()
            devices.append(device)
        for device in devices:

            async def listening(device: Device = device) -> bool:
                return device.paths.socket.exists()

            await eventually(listening, timeout=15, what="the agents' local APIs")

        started = time.monotonic()
        workers = [
            *(asyncio.create_task(produce(d, ledger, stop)) for d in devices),
            asyncio.create_task(submit_tasks(api, ledger, stop)),
            asyncio.create_task(watch_policy(api, devices, ledger, stop)),
        ]
        await _inject(hub, devices, ledger, rng, started + SOAK_S)
        stop.set()
        await asyncio.gather(*workers)

        # Heal: everything running, then let the fleet drain.
        for device in devices:
            if not device.alive():
                device.start()
        healed = time.monotonic()

        async def drained() -> bool:
            held = hub_ids(paths.database)
            reported = _set_aside_events(paths.database)
            return not any(
                ledger.confirmed[d.device_id] - ledger.at_risk[d.device_id] - set(held[d.device_id])
                or reported[d.device_id] < len(_set_aside(d))
                for d in devices
            )

        await eventually(drained, timeout=90, every=1.0, what="every confirmed record at the hub")
        drain_s = time.monotonic() - healed

        async def ended() -> bool:
            states = task_states(paths.database, ledger.tasks)
            return all(s in TERMINAL for s in states.values())

        await eventually(ended, timeout=60, every=1.0, what="every task ended")
        await read_applied_policy(api, devices, ledger)  # a last reading, healed
    finally:
        stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await api.close()
        for device in devices:
            device.kill()
        hub.stop()

    anomalies = _check(paths, devices, ledger)
    records = sum(len(c) for c in ledger.confirmed.values())
    lost = _declared_lost(paths, ledger)
    states = collections.Counter((task_states(paths.database, ledger.tasks)).values())
    set_aside = sum(len(_set_aside(d)) for d in devices)
    at_risk = sum(len(r) for r in ledger.at_risk.values())
    versions = {d: sorted(set(v)) for d, v in ledger.policy_seen.items()}
    print(
        f"\nchaos soak: {SOAK_S:.0f} s under faults, seed {SEED}\n"
        f"  faults: {dict(sorted(ledger.faults.items()))} (total {sum(ledger.faults.values())})\n"
        f"  records: {records} confirmed, {records - lost} at the hub exactly once, "
        f"{lost} lost with a store declared damaged ({at_risk} at risk when it was damaged, "
        f"{set_aside} stores set aside); refusals {dict(ledger.refused)}\n"
        f"  tasks: {len(ledger.tasks)} submitted, ended {dict(states)}\n"
        f"  policy: {ledger.policy_writes} layer writes, "
        f"{sum(len(v) for v in ledger.policy_seen.values())} applied versions read, "
        f"distinct per device {[len(v) for v in versions.values()]}\n"
        f"  drain after heal: {drain_s:.1f} s; anomalies: {len(anomalies)}"
    )
    assert not anomalies, "\n".join(anomalies[:30])
    # A damaged store is detected (set aside, logged and reported), never used as if
    # sound; a WAL that lost commits is set aside when they moved a stream's numbering
    # (a flip that took only acknowledgements loses nothing: those are sent again).
    assert len(_set_aside(devices[CORRUPT_AGENT])) == ledger.faults["corrupt_store"] == 1
    assert len(_set_aside(devices[WAL_AGENT])) <= ledger.faults["corrupt_wal"] == 1
    assert sum(ledger.faults.values()) >= MIN_FAULTS


def _declared_lost(paths: HubPaths, ledger: Ledger) -> int:
    held = hub_ids(paths.database)
    return sum(len(risk - set(held[d])) for d, risk in ledger.at_risk.items())


def _set_aside(device: Device) -> list[Path]:
    """The damaged stores the agent moved aside (each with its -wal and -shm)."""
    found = device.paths.root.glob("store.db.corrupt-*")
    return [p for p in found if not p.name.endswith(("-wal", "-shm"))]


def _check(paths: HubPaths, devices: list[Device], ledger: Ledger) -> list[str]:
    anomalies: list[str] = []
    held = hub_ids(paths.database)
    reported = _set_aside_events(paths.database)
    for device in devices:
        mine = ledger.confirmed[device.device_id]
        missing = mine - set(held[device.device_id]) - ledger.at_risk[device.device_id]
        doubled = [i for i, n in held[device.device_id].items() if n > 1]
        anomalies += [f"{device.device_id}: confirmed {i} not at the hub" for i in missing]
        anomalies += [f"{device.device_id}: {i} at the hub twice" for i in doubled]
        aside = _set_aside(device)
        if reported[device.device_id] != len(aside):
            anomalies.append(
                f"{device.device_id}: {len(aside)} stores set aside, "
                f"{reported[device.device_id]} reported to the hub"
            )
        if ledger.at_risk[device.device_id] - set(held[device.device_id]):
            # Lost records must have been declared: the damaged file set aside, logged.
            logged = any(
                "is damaged" in p.read_text(errors="replace")
                for p in device.logs.glob(f"agent-{device.index}-*.log")
            )
            if not (aside and logged):
                anomalies.append(f"{device.device_id}: records lost without a declared damage")
        verdict = _integrity(device.paths.root / "store.db")
        if verdict != "ok":
            anomalies.append(f"{device.device_id}: store integrity {verdict}")
    verdict = _integrity(paths.database)
    if verdict != "ok":
        anomalies.append(f"hub database integrity {verdict}")
    anomalies += ledger.policy_backwards()
    anomalies += check_tasks(paths.database, ledger.tasks)
    return anomalies
