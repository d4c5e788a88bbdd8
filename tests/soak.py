"""What fault-injection runs share (the chaos soak, the replica failover run, the hostile
and flooding devices): the hub and devices as processes, the workload they and the API
carry, the ledger of what was confirmed, and the checks of what the hub holds against
it, on either database back-end."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from edge.identity import DevicePaths
from hub.cli import load_config
from hub.paths import HubPaths
from outpost.modelbundle import read_bundle
from tests.databases import hub_sql
from tests.local_api import LocalClient
from tests.support import REPO, SHIPPED_MODELS, AgentProcess, eventually

TERMINAL = ("succeeded", "failed", "expired", "cancelled")
SAMPLE = read_bundle(SHIPPED_MODELS[0]).sample
assert SAMPLE is not None

Database = Path | str  # a SQLite file or a postgresql:// URL


def hub_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def listening(port: int) -> bool:
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
            return listening(self.config.web_port) and listening(self.config.mqtt_port)

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
    heartbeat_interval: float = 0.5
    agent: AgentProcess | None = None
    starts: int = 0
    paused: bool = False

    def start(self) -> None:
        self.starts += 1
        self.agent = AgentProcess(
            self.paths.root,
            heartbeat_interval=self.heartbeat_interval,
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

    def policy_backwards(self) -> list[str]:
        """Devices whose applied policy version, as read over time, went down."""
        return [
            f"{device_id}: policy went backwards: {versions}"
            for device_id, versions in self.policy_seen.items()
            if any(b < a for a, b in itertools.pairwise(versions))
        ]


class Api:
    """The hub's API over HTTPS with an admin key, tolerant of the hub being down."""

    def __init__(self, url: str, cafile: Path, token: str) -> None:
        self._url = url
        self._context = ssl.create_default_context(cafile=str(cafile))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self._session.request(
            method, self._url + path, json=body, headers=self._headers, ssl=self._context
        ) as response:
            return response.status, await response.json(content_type=None)

    async def text(self, path: str) -> str:
        async with self._session.get(
            self._url + path, headers=self._headers, ssl=self._context
        ) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    async def upload(self, model: bytes, manifest: dict[str, Any], sample: dict[str, Any]) -> int:
        """POST /api/v1/models; the status."""
        form = aiohttp.FormData()
        form.add_field("model", model, filename="model.tflite")
        form.add_field("manifest", json.dumps(manifest), filename="model.json")
        form.add_field("sample", json.dumps(sample), filename="sample.json")
        async with self._session.post(
            self._url + "/api/v1/models", data=form, headers=self._headers, ssl=self._context
        ) as response:
            return response.status

    async def close(self) -> None:
        await self._session.close()


async def produce(
    device: Device, ledger: Ledger, stop: asyncio.Event, *, pause: float = 0.03
) -> None:
    """Post batches of results to the device's local API; note the confirmed ones."""
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
            await asyncio.sleep(pause)  # the producer's pace, not a synchronisation
    finally:
        await client.close()


async def submit_tasks(api: Api, ledger: Ledger, stop: asyncio.Event) -> None:
    """Submit three tasks a second; note the accepted ids."""
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
        await asyncio.sleep(1.0)  # the submitter's pace, not a synchronisation


async def watch_policy(
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
            await read_applied_policy(api, devices, ledger)
        await asyncio.sleep(0.5)  # the readers' pace, not a synchronisation


async def read_applied_policy(api: Api, devices: list[Device], ledger: Ledger) -> None:
    """Note each device's applied policy version, as the hub reports it now."""
    for device in devices:
        status, body = await api.call("GET", f"/api/v1/devices/{device.device_id}/policy")
        if status == 200:
            ledger.policy_seen[device.device_id].append(body["applied_version"])


def hub_ids(database: Database) -> dict[str, collections.Counter[str]]:
    """Per device, how often each producer id is held at the hub."""
    held: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rows = hub_sql(database, "SELECT device_id, body FROM records WHERE stream = 'results'")
    for device_id, body in rows:
        record = msgpack.unpackb(body)
        if isinstance(record, dict) and "soak" in record:
            held[device_id][record["soak"]] += 1
    return held


def missing_records(database: Database, ledger: Ledger) -> dict[str, set[str]]:
    """Per device, the confirmed producer ids not (yet) at the hub, beyond those at risk."""
    held = hub_ids(database)
    return {
        device_id: ids - set(held[device_id]) - ledger.at_risk[device_id]
        for device_id, ids in ledger.confirmed.items()
    }


def doubled_records(database: Database) -> list[str]:
    return [
        f"{device_id}: {uid} at the hub twice"
        for device_id, counts in hub_ids(database).items()
        for uid, n in counts.items()
        if n > 1
    ]


def task_states(database: Database, ids: list[str]) -> dict[str, str]:
    found = dict(hub_sql(database, "SELECT task_id, state FROM tasks"))
    return {i: found.get(i, "missing") for i in ids}


def check_tasks(database: Database, ids: list[str]) -> list[str]:
    """Each task ends once; the result that ended it carries its latest attempt."""
    anomalies: list[str] = []
    states = dict(hub_sql(database, "SELECT task_id, state FROM tasks"))
    events: dict[str, list[tuple[str, str | None, int]]] = collections.defaultdict(list)
    for task_id, state, device_id, attempt in hub_sql(
        database, "SELECT task_id, state, device_id, attempt FROM task_events ORDER BY id"
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
