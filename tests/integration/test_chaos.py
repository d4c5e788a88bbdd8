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
import itertools
import os
import random
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.store.recovery import EVENT as SET_ASIDE_EVENT
from hub.cli import load_config
from hub.initialise import initialise
from hub.paths import HubPaths
from outpost.modelbundle import read_bundle
from tests import wal_frames
from tests.integration.test_store_forward import write_agent_settings
from tests.local_api import LocalClient
from tests.support import PROFILES, REPO, SHIPPED_MODELS, AgentProcess, eventually, free_port

SOAK_S = float(os.environ.get("OUTPOST_SOAK_S", "30"))
SEED = os.environ.get("OUTPOST_SOAK_SEED", "20261126")
AGENTS = 3
FULL_AGENT = 0  # its results stream is bounded small: the "store full" fault fills it
FULL_BOUND = 300
CORRUPT_AGENT = AGENTS - 1  # its store is corrupted while it is down (once per run)
WAL_AGENT = 1  # a WAL frame header of its store is flipped while it is down (once per run)
MIN_FAULTS = int(SOAK_S / 4)
TERMINAL = ("succeeded", "failed", "expired", "cancelled")
SAMPLE = read_bundle(SHIPPED_MODELS[0]).sample
assert SAMPLE is not None


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class HubProcess:
    """`outpost-hub run` as a child process that the test may kill and start again."""

    def __init__(self, paths: HubPaths, logs: Path) -> None:
        self.paths = paths
        self.logs = logs
        self.config = load_config(paths.root)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"hub-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "run", "--data", str(self.paths.root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        process = self.process

        async def up() -> bool:
            assert process.poll() is None, (self.logs / f"hub-{self.starts}.log").read_text()
            return _listening(self.config.web_port) and _listening(self.config.mqtt_port)

        await eventually(up, timeout=30, every=0.1, what="the hub process")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def broker_pid(self) -> int | None:
        try:
            return int((self.paths.broker_dir / "mosquitto.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


@dataclass
class Device:
    index: int
    paths: DevicePaths
    device_id: str
    logs: Path
    agent: AgentProcess | None = None
    starts: int = 0
    paused: bool = False

    def start(self) -> None:
        self.starts += 1
        self.agent = AgentProcess(
            self.paths.root,
            heartbeat_interval=0.5,
            log=self.logs / f"agent-{self.index}-{self.starts}.log",
        )

    def alive(self) -> bool:
        return self.agent is not None and self.agent.process.poll() is None

    def kill(self) -> None:
        if self.agent is not None:
            self.agent.process.send_signal(signal.SIGCONT)
            self.agent.stop()
        self.paused = False


@dataclass
class Ledger:
    """What the agents confirmed and what was submitted; the checker's input."""

    confirmed: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    # Confirmed records a corrupted store may have taken with it: not yet at the hub when
    # the store was damaged. They may be missing; any other missing record is an anomaly.
    at_risk: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    tasks: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    policy_seen: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    policy_writes: int = 0


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


def _hub_ids(database: Path) -> dict[str, collections.Counter[str]]:
    """Per device, how often each producer id is held at the hub."""
    held: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        for device_id, body in db.execute(
            "SELECT device_id, body FROM records WHERE stream = 'results'"
        ):
            record = msgpack.unpackb(body)
            if isinstance(record, dict) and "soak" in record:
                held[device_id][record["soak"]] += 1
    return held


class Api:
    """The hub's API over HTTPS with an admin key, tolerant of the hub being down."""

    def __init__(self, hub: HubProcess, token: str) -> None:
        self._url = hub.config.hub_url
        self._context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self._session.request(
            method, self._url + path, json=body, headers=self._headers, ssl=self._context
        ) as response:
            return response.status, await response.json(content_type=None)

    async def close(self) -> None:
        await self._session.close()


async def _produce(device: Device, ledger: Ledger, stop: asyncio.Event) -> None:
    client = LocalClient(device.paths.socket)
    try:
        while not stop.is_set():
            batch = [{"soak": uuid.uuid4().hex} for _ in range(random.randint(1, 20))]
            try:
                status, body = await client.append("results", batch)
            except (TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2)  # the agent is down, paused or restarting
                continue
            if status == 201:
                ledger.confirmed[device.device_id].update(r["soak"] for r in batch)
            else:
                assert status == 507, body
                assert "stream is full" in body["error"]["message"], body
                ledger.refused[body["error"]["code"]] += 1
            await asyncio.sleep(0.03)
    finally:
        await client.close()


async def _submit_tasks(api: Api, ledger: Ledger, stop: asyncio.Event) -> None:
    assert SAMPLE is not None
    task = {
        "model": "vibration-anomaly",
        "input": SAMPLE.input,
        "dtype": "int8",
        "deadline_s": 30,
        "lease_s": 5,
    }
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            status, body = await api.call("POST", "/api/v1/tasks", {"tasks": [task] * 3})
            if status == 202:
                ledger.tasks.extend(body["ids"])
        await asyncio.sleep(1.0)


async def _watch_policy(
    api: Api, devices: list[Device], ledger: Ledger, stop: asyncio.Event
) -> None:
    """Write the fleet layer now and then; read each device's applied version over time."""
    n = 0
    while not stop.is_set():
        n += 1
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            if n % 4 == 0:
                layer = {"scope": "fleet", "document": {"metrics_interval": 20 + n % 40}}
                status, _ = await api.call("PUT", "/api/v1/policy/layers/fleet", layer)
                ledger.policy_writes += status == 200
            for device in devices:
                status, body = await api.call("GET", f"/api/v1/devices/{device.device_id}/policy")
                if status == 200:
                    ledger.policy_seen[device.device_id].append(body["applied_version"])
        await asyncio.sleep(0.5)


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
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        kind = rng.choice([*kinds, *sorted(once)])
        if kind == "kill_agent":
            device = rng.choice(devices)
            device.kill()
            await asyncio.sleep(rng.uniform(0, 1.0))
            device.start()
        elif kind == "corrupt_store":
            once.discard(kind)
            device = devices[CORRUPT_AGENT]
            device.kill()
            # What the hub does not hold yet may go with the damaged file.
            held = _hub_ids(hub.paths.database)[device.device_id]
            ledger.at_risk[device.device_id] |= ledger.confirmed[device.device_id] - set(held)
            _corrupt(device.paths.root / "store.db")
            device.start()
        elif kind == "corrupt_wal":
            device = devices[WAL_AGENT]
            device.kill()  # kill -9: the commits stay in the WAL
            held = _hub_ids(hub.paths.database)[device.device_id]
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
            await asyncio.sleep(rng.uniform(0, 1.0))
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
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            device.agent.signal(signal.SIGCONT)
        elif kind == "pause_hub":
            os.kill(hub.pid, signal.SIGSTOP)
            await asyncio.sleep(rng.uniform(0.5, 3.0))
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
    api = Api(hub, _cli("hub.cli", "token", "create", "--data", str(paths.root), "--role",
                        "admin", "--api-key"))  # fmt: skip
    devices: list[Device] = []
    ledger = Ledger()
    stop = asyncio.Event()
    workers: list[asyncio.Task[None]] = []
    try:
        for index in range(AGENTS):
            token = _cli("hub.cli", "enroll-token", "--data", str(paths.root))
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
            write_agent_settings(
                device_paths, "[agent.sync]\nbatch_records = 50\nack_timeout_s = 2\n" + bounds
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
            *(asyncio.create_task(_produce(d, ledger, stop)) for d in devices),
            asyncio.create_task(_submit_tasks(api, ledger, stop)),
            asyncio.create_task(_watch_policy(api, devices, ledger, stop)),
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
            held = _hub_ids(paths.database)
            reported = _set_aside_events(paths.database)
            return not any(
                ledger.confirmed[d.device_id] - ledger.at_risk[d.device_id] - set(held[d.device_id])
                or reported[d.device_id] < len(_set_aside(d))
                for d in devices
            )

        await eventually(drained, timeout=90, every=1.0, what="every confirmed record at the hub")
        drain_s = time.monotonic() - healed

        async def ended() -> bool:
            states = await _task_states(paths.database, ledger.tasks)
            return all(s in TERMINAL for s in states.values())

        await eventually(ended, timeout=60, every=1.0, what="every task ended")
        workers = [asyncio.create_task(_watch_policy(api, devices, ledger, asyncio.Event()))]
        await asyncio.sleep(1.5)
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
    states = collections.Counter((await _task_states(paths.database, ledger.tasks)).values())
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


async def _task_states(database: Path, ids: list[str]) -> dict[str, str]:
    def read() -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA busy_timeout = 5000")
            return dict(db.execute("SELECT task_id, state FROM tasks").fetchall())

    found = await asyncio.to_thread(read)
    return {i: found.get(i, "missing") for i in ids}


def _declared_lost(paths: HubPaths, ledger: Ledger) -> int:
    held = _hub_ids(paths.database)
    return sum(len(risk - set(held[d])) for d, risk in ledger.at_risk.items())


def _set_aside(device: Device) -> list[Path]:
    """The damaged stores the agent moved aside (each with its -wal and -shm)."""
    found = device.paths.root.glob("store.db.corrupt-*")
    return [p for p in found if not p.name.endswith(("-wal", "-shm"))]


def _check(paths: HubPaths, devices: list[Device], ledger: Ledger) -> list[str]:
    anomalies: list[str] = []
    held = _hub_ids(paths.database)
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
        versions = ledger.policy_seen[device.device_id]
        if any(b < a for a, b in itertools.pairwise(versions)):
            anomalies.append(f"{device.device_id}: policy went backwards: {versions}")
        verdict = _integrity(device.paths.root / "store.db")
        if verdict != "ok":
            anomalies.append(f"{device.device_id}: store integrity {verdict}")
    verdict = _integrity(paths.database)
    if verdict != "ok":
        anomalies.append(f"hub database integrity {verdict}")
    anomalies += _check_tasks(paths.database, ledger.tasks)
    return anomalies


def _check_tasks(database: Path, ids: list[str]) -> list[str]:
    """Each task ends once; the result that ended it carries its latest attempt."""
    anomalies: list[str] = []
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        states = dict(db.execute("SELECT task_id, state FROM tasks").fetchall())
        events: dict[str, list[tuple[str, str | None, int]]] = collections.defaultdict(list)
        for task_id, state, device_id, attempt in db.execute(
            "SELECT task_id, state, device_id, attempt FROM task_events ORDER BY id"
        ):
            events[task_id].append((state, device_id, attempt))
    for task_id in ids:
        if states.get(task_id) not in TERMINAL:
            anomalies.append(f"task {task_id} not ended: {states.get(task_id)}")
            continue
        trail = events[task_id]
        terminal = [e for e in trail if e[0] in TERMINAL]
        if len(terminal) != 1:
            anomalies.append(f"task {task_id} ended {len(terminal)} times: {trail}")
            continue
        state, device_id, attempt = terminal[0]
        if state in ("succeeded", "failed") and device_id is not None:
            # The fencing token: a device's result counts only for the latest assignment.
            assigned = [(d, a) for s, d, a in trail if s == "assigned"]
            if not assigned or assigned[-1] != (device_id, attempt):
                anomalies.append(f"task {task_id}: a stale result ended it: {trail}")
    return anomalies
