"""Tasks end to end, and how many devices one hub keeps.

1. Tasks/s and latency from `POST /api/v1/tasks` to the result stored at the hub, with
   1, 3 and 10 real agents (subprocesses) running the vibration model, beside the same
   inferences in a bare interpreter loop in the same run.
2. A fleet simulator: N lightweight devices in this process (real mTLS MQTT clients
   speaking the wire contract: hello, heartbeats, accepting tasks and uploading results
   without running a model) against a hub running as its own process, with tasks
   flowing; the largest N for which every device stays online and every task ends, with
   the hub's CPU and memory at it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.inference.runtime import choose_runtime
from outpost import tls, wire
from outpost.aio import taken
from outpost.modelbundle import read_bundle
from outpost.mqtt import NODELAY
from tests.api_client import ApiClient
from tests.bench.common import Result, device_cert, make_hub, running_hub
from tests.bench.fleetsim import answer_tasks
from tests.bench.taskfloor import one_task_floor
from tests.support import PROFILES, REPO, SHIPPED_MODELS, AgentProcess, mint_token

TASKS = 600
FLEET_SIZES = (1, 3, 10)
SIM_STEPS = (250, 500, 1000, 2000, 4000)
ONE_AT_A_TIME = 100  # tasks submitted one after another's result, for the idle latency
# Where one task alone spends its time, each phase ending at a moment the hub or the
# device recorded (one clock: all run on this machine).
PHASES = (
    ("submitted", "the POST answered: the task and its assignment committed (synced)"),
    (
        "started",
        "the device began it: the assignment published and received (a task that finds "
        "a free slot starts its inference as the inbox's write begins)",
    ),
    (
        "finished",
        "the device's result made: the inference, and the inbox's write (a lone task whose "
        "inference ends within 2 ms goes into the inbox with its result, after this)",
    ),
    (
        "stored",
        "the result stored at the hub: recorded on the device (synced), uploaded, stored (synced)",
    ),
)
SIM_HEARTBEAT_S = 5.0
SIM_HOLD_S = 12.0  # each step runs this long with tasks flowing
SIM_TASK_RATE = 100.0  # tasks per second submitted during a step
BUNDLE = read_bundle(SHIPPED_MODELS[0])
assert BUNDLE.sample is not None
INPUT = BUNDLE.sample.input
ONE = {"model": BUNDLE.manifest.name, "input": INPUT, "dtype": "int8"}  # a task as submitted
# The same task with its input as the tensor's bytes (no nested lists on the way).
ONE_AS_BYTES = {
    "model": BUNDLE.manifest.name,
    "input_b64": base64.b64encode(np.array(INPUT, np.int8).tobytes()).decode(),
    "dtype": "int8",
}


# ------------------------------------------------------------------ end to end


def _bare(count: int) -> float:
    """The same inferences, one interpreter, no agent: inferences per second."""
    interpreter = choose_runtime().interpreter(str(BUNDLE.model_path), 1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    tensor = np.array(INPUT, np.int8)
    start = time.perf_counter()
    for _ in range(count):
        interpreter.set_tensor(inp["index"], tensor)
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
    return count / (time.perf_counter() - start)


@dataclass(frozen=True)
class EndToEnd:
    rate: float  # tasks/s under a batch of TASKS
    rate_as_bytes: float  # the same, a second batch, each input as the tensor's bytes
    p50: float  # seconds from submission to the stored result, under that batch
    p99: float
    alone: list[float]  # the same for each task submitted alone (after the last ended)
    phases: dict[str, list[float]]  # each alone task's seconds from submission to each PHASE


async def _phases(
    store: Any, timed: list[tuple[str, float, float, float]]
) -> dict[str, list[float]]:
    """Seconds from each alone task's submission to the end of each of PHASES: its POST's
    answer, the device's started_at and finished_at (its result), the hub's store."""
    phases: dict[str, list[float]] = {name: [] for name, _ in PHASES}
    for task_id, posted, answered, stored in timed:
        task = await store.task(task_id)
        result = task.result or {}
        at = (answered, result.get("started_at"), result.get("finished_at"), stored)
        for (name, _), moment in zip(PHASES, at, strict=True):
            if moment is not None:
                phases[name].append(moment - posted)
    return phases


async def _end_to_end(root: Path, agents: int) -> EndToEnd:
    """Tasks per second, p50 and p99 seconds from submission to the stored result, under
    a batch of TASKS; and one task alone (submitted after the last ended), by phase."""
    async with running_hub(root / "hub") as hub:
        store = hub.parts.store
        started: list[AgentProcess] = []
        try:
            for n in range(agents):
                device = DevicePaths(root / f"device-{n}")
                await enroll(await mint_token(hub), device, PROFILES / "x86-gateway.toml")
                directory = ModelDirectory(device.models)
                directory.install(SHIPPED_MODELS[0])
                started.append(
                    AgentProcess(
                        device.root,
                        heartbeat_interval=1.0,
                        log=root / f"agent-{n}.log",
                        log_level="info",
                    )
                )
            while sum(d.online and d.task_slots > 0 for d in await store.devices()) < agents:
                await asyncio.sleep(0.05)  # the benchmark's own poll of the registry
            client = ApiClient(hub)
            token = await client.token("operator", subject="bench")
            one = ONE
            # Each result's store is seen as it commits, not by polling the database: a
            # poll every millisecond was a query on the hub's database thread, in the
            # path it measured.
            stored, stored_at = asyncio.Event(), [0.0]
            apply_uploads = store.apply_uploads

            async def apply_and_tell(*args: Any, **kwargs: Any) -> Any:
                outcome = await apply_uploads(*args, **kwargs)
                stored_at[0] = time.time()  # the device's timestamps use this clock
                stored.set()
                return outcome

            store.apply_uploads = apply_and_tell  # type: ignore[method-assign]
            timed = []  # task id, posted, answered, stored
            for n in range(ONE_AT_A_TIME):
                posted = time.time()
                reply = await client.call("POST", "/api/v1/tasks", token=token, body=one)
                answered = time.time()
                assert reply.status == 202, reply.body
                while True:
                    await asyncio.wait_for(stored.wait(), 60)
                    stored.clear()
                    if (await store.task_counts()).get("succeeded", 0) > n:
                        break  # else another stream's upload (metrics, events)
                timed.append((reply.body["ids"][0], posted, answered, stored_at[0]))
            seconds = await _batch(client, token, store, one, ONE_AT_A_TIME)
            done = await store.tasks_page(states=["succeeded"], limit=TASKS + ONE_AT_A_TIME)
            latency = sorted((t.finished_at or 0) - t.created_at for t in done[ONE_AT_A_TIME:])
            as_bytes = await _batch(client, token, store, ONE_AS_BYTES, TASKS + ONE_AT_A_TIME)
            await client.close()
            alone = [stored - posted for _, posted, _, stored in timed]
            return EndToEnd(
                TASKS / seconds,
                TASKS / as_bytes,
                statistics.median(latency),
                _p99(latency),
                alone,
                await _phases(store, timed),
            )
        finally:
            for agent in started:
                agent.stop()


async def _batch(
    client: ApiClient, token: str, store: Any, one: dict[str, Any], succeeded: int
) -> float:
    """Seconds from submitting TASKS copies of `one` at once until all succeeded (with
    `succeeded` before them)."""
    start = time.perf_counter()
    reply = await client.call("POST", "/api/v1/tasks", token=token, body={"tasks": [one] * TASKS})
    assert reply.status == 202, reply.body
    while (await store.task_counts()).get("succeeded", 0) < succeeded + TASKS:
        await asyncio.sleep(0.02)  # the benchmark's own poll
    return time.perf_counter() - start


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# ------------------------------------------------------------------ fleet simulator


class SimDevice:
    """A device that speaks the wire contract and answers tasks without a model."""

    def __init__(
        self, device_id: str, profile: str, cert: Path, key: Path, ca: Path, port: int
    ) -> None:
        self.device_id = device_id
        self._profile = profile
        self._context = tls.client_context(ca, cert, key)
        self._port = port
        self._seq = 0
        self.done = 0
        self._client: aiomqtt.Client | None = None

    def quiet(self) -> None:
        """A client left waiting for its disconnect (see `_ended`) hears of it when the
        broker stops, and nobody awaits that any more: take it, so that asyncio does not
        report it as never retrieved."""
        if self._client is not None:
            self._client._disconnected.add_done_callback(taken)  # aiomqtt's own future

    async def run(self, connected: asyncio.Event) -> None:
        self._client = aiomqtt.Client(
            "127.0.0.1",
            self._port,
            identifier=self.device_id,
            tls_context=self._context,
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=NODELAY,
            keepalive=60,
        )
        try:
            await self._serve(self._client, connected)
        except* aiomqtt.MqttError:
            # Its link ended: the broker stopped at the end of the run, or the device was
            # cancelled mid-publish (aiomqtt then raises this, not CancelledError). Raised
            # on, it surfaced as "unhandled exception during asyncio.run() shutdown".
            pass

    async def _serve(self, session: aiomqtt.Client, connected: asyncio.Event) -> None:
        async with session as client:
            await client.subscribe(wire.down_topic(self.device_id, "#"), qos=1)
            hello = wire.Hello(
                conn="sim",
                agent_version="sim",
                profile=self._profile,
                heartbeat_interval=SIM_HEARTBEAT_S,
                capabilities=wire.Capabilities(cores=1, memory_bytes=1 << 30, disk_bytes=1 << 30),
                runtime="none",
                models=[
                    wire.ModelInfo(
                        name=BUNDLE.manifest.name, version="1.0.0", sha256="", state="ready"
                    )
                ],
                task_slots=2,
            )
            await client.publish(self._up("hello"), wire.encode("hello", hello), qos=1)
            connected.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._beat(client))
                async for message in client.messages:
                    body = wire.decode(message.payload, kinds=wire.DOWN_KINDS).body
                    if isinstance(body, wire.Tasks):
                        group.create_task(self._answer(client, body))

    async def _beat(self, client: aiomqtt.Client) -> None:
        load = wire.Load(cpu_percent=5, memory_percent=10, disk_percent=10, rss_bytes=1 << 20)
        while True:
            await asyncio.sleep(SIM_HEARTBEAT_S)
            beat = wire.Heartbeat(
                conn="sim", uptime_s=1, heartbeat_interval=SIM_HEARTBEAT_S, load=load
            )
            await client.publish(self._up("heartbeat"), wire.encode("heartbeat", beat), qos=1)

    async def _answer(self, client: aiomqtt.Client, body: wire.Tasks) -> None:
        task_state, records, self._seq = answer_tasks(body, self._seq)
        await client.publish(self._up("task_state"), task_state, qos=1)
        await client.publish(self._up("records"), records, qos=1)
        self.done += len(body.tasks)

    def _up(self, kind: str) -> str:
        return wire.up_topic(self.device_id, kind)


async def _fleet_step(
    root: Path, url: str, ca: Path, token: str, port: int, count: int, hub_pid: int
) -> dict[str, Any]:
    """Run `count` simulated devices with tasks flowing; report what held."""
    from hub.paths import HubPaths

    paths = HubPaths(root)
    certs = root / "sim-certs"
    devices = []
    for n in range(count):
        device_id = f"dev-sim{count:05d}{n:05d}"
        cert, key = device_cert(paths, device_id, certs)
        devices.append(SimDevice(device_id, f"sim-{count}", cert, key, ca, port))
    events = [asyncio.Event() for _ in devices]
    runs = [asyncio.create_task(d.run(e)) for d, e in zip(devices, events, strict=True)]
    context = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}"}
    hub = psutil.Process(hub_pid)
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
        async with aiohttp.ClientSession() as session:

            async def online() -> int:
                """This step's devices online, from the hub's /metrics."""
                async with session.get(f"{url}/metrics", ssl=context, headers=headers) as r:
                    text = await r.text()
                for family in text_string_to_metric_families(text):
                    if family.name == "outpost_hub_devices":
                        for sample in family.samples:
                            if sample.labels == {"state": "online", "profile": f"sim-{count}"}:
                                return int(sample.value)
                return 0

            deadline = time.monotonic() + 30
            while await online() < count and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # waiting for every hello to be registered
            hub.cpu_percent()
            submitted: list[str] = []
            lowest = count
            start = time.monotonic()
            selector: dict[str, Any] = {}
            while time.monotonic() - start < SIM_HOLD_S:
                batch = {
                    "tasks": [
                        {
                            "model": BUNDLE.manifest.name,
                            "input": [[0] * 3] * 128,
                            "dtype": "int8",
                            "deadline_s": 60,
                            "target": selector,
                        }
                    ]
                    * int(SIM_TASK_RATE)
                }
                async with session.post(
                    f"{url}/api/v1/tasks", ssl=context, headers=headers, json=batch
                ) as r:
                    submitted += (await r.json())["ids"]
                lowest = min(lowest, await online())
                await asyncio.sleep(1.0)  # one batch a second
            cpu = hub.cpu_percent()
            rss = hub.memory_info().rss / 2**20
            settle = time.monotonic() + 15
            done = sum(d.done for d in devices)
            while done < len(submitted) and time.monotonic() < settle:
                await asyncio.sleep(0.5)  # let the last tasks finish
                done = sum(d.done for d in devices)
            return {
                "count": count,
                "lowest_online": lowest,
                "submitted": len(submitted),
                "done": done,
                "hub_cpu_percent": cpu,
                "hub_rss_mib": rss,
                "held": lowest == count and done >= len(submitted),
            }
    finally:
        for run in runs:
            run.cancel()
        await _ended(runs)
        for device in devices:
            device.quiet()


async def _ended(runs: list[asyncio.Task[None]], seconds: float = 10.0) -> None:
    """Wait for the cancelled devices' runs to end. A client whose disconnect the broker
    never acknowledges waits for it without a deadline (aiomqtt's `__aexit__`; a step of
    4,000 once left 228 waiting, and the benchmark hung until its own deadline): one still
    running after `seconds` is cancelled again, which ends that wait."""
    for _ in range(3):
        pending = [run for run in runs if not run.done()]
        if not pending:
            break
        await asyncio.wait(pending, timeout=seconds)
        for run in pending:
            run.cancel()
    if pending := [run for run in runs if not run.done()]:
        await asyncio.wait(pending, timeout=seconds)  # the last cancel's effect
    for run in runs:
        taken(run)


async def _fleet(root: Path) -> list[dict[str, Any]]:
    paths, config = make_hub(root / "fleet-hub")  # rate limits lifted: we poll the API
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "run", "--data", str(paths.root)],
        cwd=REPO,
        stdout=(root / "fleet-hub.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        token = subprocess.run(
            [
                *(sys.executable, "-m", "hub.cli", "token", "create", "--data", str(paths.root)),
                *("--role", "operator", "--subject", "bench", "--ttl", "2h"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        context = ssl.create_default_context(cafile=str(paths.ca_cert))
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{config.hub_url}/api/v1/health", ssl=context) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline or hub.poll() is not None:
                    log = (root / "fleet-hub.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the fleet benchmark's hub did not start:\n{log}")
                await asyncio.sleep(0.1)  # waiting for the hub to listen
        steps = []
        for count in SIM_STEPS:
            step = await _fleet_step(
                paths.root, config.hub_url, paths.ca_cert, token, config.mqtt_port, count, hub.pid
            )
            print(f"# fleet step: {json.dumps(step)}", flush=True)
            steps.append(step)
            if not step["held"]:
                break
        return steps
    finally:
        hub.terminate()
        try:
            hub.wait(20)
        except subprocess.TimeoutExpired:
            hub.kill()


def run(root: Path) -> list[Result]:
    results = []
    bare = _bare(TASKS)
    floor_tasks = asyncio.run(one_task_floor(root / "floor", ONE_AT_A_TIME, ONE))
    floor = sorted(t["stored"] for t in floor_tasks)
    floor_phases = ", ".join(
        f"{name} {statistics.median(t[name] for t in floor_tasks) * 1000:.1f}" for name, _ in PHASES
    )
    floor_note = (
        "raw = the path's parts bare: an HTTPS POST, three synced SQLite commits, the "
        f"broker's relays down and up (tests/bench/taskfloor.py), by phase: {floor_phases}"
    )
    for agents in FLEET_SIZES:
        e2e = asyncio.run(_end_to_end(root / f"e2e-{agents}", agents))
        # Each phase's share of the alone p50, as medians of its own (they need not add up).
        phases = ", ".join(
            f"{name} {statistics.median(seconds) * 1000:.1f}"
            for name, seconds in e2e.phases.items()
            if seconds
        )
        results += [
            Result(
                f"tasks end to end, {agents} agent(s)",
                e2e.rate,
                bare,
                "tasks/s",
                f"raw = the same {TASKS} inferences in a bare invoke loop",
            ),
            Result(
                f"tasks end to end, {agents} agent(s), input as the tensor's bytes",
                e2e.rate_as_bytes,
                bare,
                "tasks/s",
                f"raw = the same; {TASKS} more tasks, submitted once the first {TASKS} "
                "ended, each with `input_b64` instead of nested lists",
            ),
            Result(
                f"  submit to result stored, p50, {agents} agent(s)", e2e.p50 * 1000, None, "ms"
            ),
            Result(
                f"  submit to result stored, p99, {agents} agent(s)", e2e.p99 * 1000, None, "ms"
            ),
            Result(
                f"  one task alone, submit to result stored, p50, {agents} agent(s)",
                statistics.median(e2e.alone) * 1000,
                statistics.median(floor) * 1000,
                "ms",
                f"{ONE_AT_A_TIME} tasks, one after another's result; median ms from the "
                f"submission to each phase's end: {phases} (see PHASES); {floor_note}",
            ),
            Result(
                f"  one task alone, submit to result stored, p99, {agents} agent(s)",
                _p99(sorted(e2e.alone)) * 1000,
                _p99(floor) * 1000,
                "ms",
            ),
        ]
    steps = asyncio.run(_fleet(root))
    held = [s for s in steps if s["held"]]
    best = held[-1] if held else steps[0]
    results.append(
        Result(
            "fleet simulator: devices one hub keeps",
            best["count"] if held else 0,
            None,
            "devices",
            f"heartbeat {SIM_HEARTBEAT_S:g} s, {SIM_TASK_RATE:g} tasks/s; hub CPU "
            f"{best['hub_cpu_percent']:.0f} %, RSS {best['hub_rss_mib']:.0f} MiB; "
            f"largest step tried {steps[-1]['count']}",
        )
    )
    return results
