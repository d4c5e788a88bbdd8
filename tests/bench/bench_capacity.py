"""Capacity: how many devices the hub holds, measured from outside with the fleet
simulator (tests/bench/fleetsim.py), on SQLite (one replica), on PostgreSQL with one
replica and with two behind one Mosquitto; then a reconnect storm.

Each configuration ramps the fleet at `RAMP_PER_S` devices a second through `STEPS`
(up to `OUTPOST_BENCH_FLEET_MAX`, default 10,000; 40,000 for the full table; from
`OUTPOST_BENCH_FLEET_MIN`, to start at a larger step), holds each
step `OUTPOST_BENCH_HOLD_S` (30 s) with heartbeats every 10 s and tasks flowing, and
stops at the first step it does not hold. A step holds when every device's hello was
answered, every device stayed online in the hub's database through the hold, a
heartbeat reached the database within one heartbeat interval, and every task submitted
during the hold ended. Per step: hello answer time (p50, p99, max) during the ramp,
heartbeat-to-stored lag (a probe device beats and the benchmark polls the database),
CPU and RSS of each replica, of Mosquitto and of the simulator itself (it shares the
machine's cores: figures say so).

One Mosquitto holds a socket per device within the open-file limit it inherits. Where
a step needs more devices than that allows, the simulator's later workers connect to
overflow brokers bridged to the fleet's (tests/bench/overflow.py): the hub sees the same
messages, one broker hop later for those devices. Each step says how many brokers it
used, and Mosquitto's CPU and RSS are those of all of them.

Reconnect storm (SQLite hub, `OUTPOST_BENCH_STORM_DEVICES`, default 10,000): kill -9 the
broker (the hub restarts it), then cut every device's link for 30 s; each time, how
long until every device is back and its hello answered, and the hub's peak CPU and RSS.

PostgreSQL runs durable here (fsync and synchronous commit on), as in production.
`OUTPOST_BENCH_CAPACITY` picks configurations: `sqlite,postgresql,postgresql-2,storm`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.bench.capacity_setups import Setup, postgres_setup, sqlite_setup
from tests.bench.common import Result
from tests.bench.fleetsim import (
    DEVICES_PER_WORKER,
    SIM_MODEL,
    Fleet,
    SimDevice,
    Worker,
    WorkerSpec,
    percentile,
    raise_open_files,
)
from tests.bench.overflow import OverflowBroker, devices_per_broker, start_overflow

STEPS = (1_000, 2_500, 5_000, 10_000, 15_000, 25_000, 40_000)
FLEET_MAX = int(os.environ.get("OUTPOST_BENCH_FLEET_MAX", "10000"))
FLEET_MIN = int(os.environ.get("OUTPOST_BENCH_FLEET_MIN", "0"))  # skip the smaller steps
HOLD_S = float(os.environ.get("OUTPOST_BENCH_HOLD_S", "30"))
STORM_DEVICES = int(os.environ.get("OUTPOST_BENCH_STORM_DEVICES", "10000"))
CONFIGS = os.environ.get("OUTPOST_BENCH_CAPACITY", "sqlite,postgresql,postgresql-2,storm")
RAMP_PER_S = 200.0
HEARTBEAT_S = 10.0
TASK_RATE = 20  # tasks a second, submitted during each hold
BACK_WITHIN_S = 120.0  # how long the storm waits for the fleet before calling it lost


# ------------------------------------------------------------------ measuring


class Usage:
    """CPU (percent of one core, averaged since `start`) and RSS of named processes."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self._processes = {
            name: [psutil.Process(pid) for pid in group] for name, group in pids.items()
        }
        self._started = time.monotonic()
        self._cpu0 = {name: self._cpu(group) for name, group in self._processes.items()}

    @staticmethod
    def _cpu(group: list[psutil.Process]) -> float:
        total = 0.0
        for process in group:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def read(self) -> dict[str, dict[str, float]]:
        elapsed = max(1e-6, time.monotonic() - self._started)
        out = {}
        for name, group in self._processes.items():
            rss = 0.0
            for process in group:
                with contextlib.suppress(psutil.Error):
                    rss += process.memory_info().rss / 2**20
            cpu = (self._cpu(group) - self._cpu0[name]) / elapsed * 100
            out[name] = {"cpu_percent": round(cpu, 1), "rss_mib": round(rss, 1)}
        return out


class Probe:
    """One simulated device in the benchmark's own process, beating on demand: the time
    from its heartbeat leaving to the hub's database showing it is the lag."""

    def __init__(self, setup: Setup, folder: Path) -> None:
        spec = WorkerSpec(
            90, folder, setup.ca_cert, setup.ca_key, setup.broker_port, HEARTBEAT_S, 1.0, False
        )
        self._worker = Worker(spec)
        self._database = setup.database
        self.device: SimDevice = self._worker._new_device()
        self._run = asyncio.create_task(self.device.run())

    async def ready(self) -> None:
        deadline = time.monotonic() + 120
        while self._worker.counters.answered < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the probe device's hello was never answered")
            await asyncio.sleep(0.05)  # the benchmark's own poll

    async def lag(self) -> float:
        """Seconds until the hub has stored one heartbeat (inf: not within a minute)."""
        before = await self._database.last_heartbeat(self.device.device_id)
        sent = time.monotonic()
        self.device.beat()
        while time.monotonic() - sent < 60:
            if await self._database.last_heartbeat(self.device.device_id) != before:
                return time.monotonic() - sent
            await asyncio.sleep(0.01)  # the benchmark's own poll of the database
        return math.inf

    async def stop(self) -> None:
        self._run.cancel()
        with contextlib.suppress(BaseException):
            await self._run


class Tasks:
    """Submits `TASK_RATE` tasks a second, spread over the replicas' APIs."""

    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        self._context = ssl.create_default_context(cafile=str(setup.ca_cert))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._headers = {"Authorization": f"Bearer {setup.token}"}
        self._turn = 0
        self.ids: list[str] = []
        self.refused = 0
        self.why: dict[str, int] = {}  # each refusal's status or error, counted
        self.slowest_s = 0.0  # the slowest submission's round trip

    async def submit(self) -> None:
        url = self._setup.urls[self._turn % len(self._setup.urls)]
        self._turn += 1
        one = {"model": SIM_MODEL, "input": [[0, 0, 0]], "dtype": "int8", "deadline_s": 120}
        why = ""
        sent = time.monotonic()
        try:
            async with self._session.post(
                f"{url}/api/v1/tasks",
                ssl=self._context,
                headers=self._headers,
                json={"tasks": [one] * TASK_RATE},
            ) as reply:
                if reply.status == 202:
                    self.ids += (await reply.json())["ids"]
                else:
                    why = f"HTTP {reply.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__
        self.slowest_s = max(self.slowest_s, time.monotonic() - sent)
        if why:
            self.refused += TASK_RATE
            self.why[why] = self.why.get(why, 0) + 1

    async def close(self) -> None:
        await self._session.close()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else round(seconds * 1000, 1)


async def _step(
    setup: Setup, fleet: Fleet, probe: Probe, size: int, pids: dict[str, list[int]]
) -> dict[str, Any]:
    await fleet.prepare(size)  # the simulator's certificates, before the ramp is timed
    ramp_usage = Usage({**pids, "simulator": fleet.pids()})
    await fleet.grow(size, RAMP_PER_S)
    waited = time.monotonic()
    report = await fleet.report()
    latencies = report["hello_latencies"]
    while report["answered"] < size and time.monotonic() - waited < 60:
        await asyncio.sleep(1)  # the benchmark's own poll of its workers
        report = await fleet.report()
        latencies += report["hello_latencies"]
    latencies.sort()
    step: dict[str, Any] = {
        "devices": size,
        "answered_after_ramp": report["answered"],
        "waited_after_ramp_s": round(time.monotonic() - waited, 1),
        "hello_p50_ms": _ms(percentile(latencies, 0.5)),
        "hello_p99_ms": _ms(percentile(latencies, 0.99)),
        "hello_max_ms": _ms(latencies[-1] if latencies else None),
        "ramp_usage": ramp_usage.read(),
    }
    broke: list[str] = []
    if report["answered"] < size:
        broke.append(f"{size - report['answered']} hellos unanswered 60 s after the ramp")
    usage = Usage({**pids, "simulator": fleet.pids()})
    tasks = Tasks(setup)
    lags: list[float] = []
    lowest_online = size + 1
    held_from = time.monotonic()
    try:
        while time.monotonic() - held_from < HOLD_S:
            tick = time.monotonic()
            await tasks.submit()
            lags.append(await probe.lag())
            lowest_online = min(lowest_online, await setup.database.online())
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # a batch a second
        step["hold_usage"] = usage.read()
        settle = time.monotonic()
        ended = await setup.database.tasks_ended(tasks.ids)
        while ended < len(tasks.ids) and time.monotonic() - settle < 30:
            await asyncio.sleep(1)  # the benchmark's own poll of the database
            ended = await setup.database.tasks_ended(tasks.ids)
    finally:
        await tasks.close()
    after = await fleet.report()
    lags.sort()
    step |= {
        "lowest_online": lowest_online,
        "lag_p50_ms": _ms(percentile(lags, 0.5)),
        "lag_max_ms": _ms(lags[-1] if lags else None),
        "tasks_submitted": len(tasks.ids),
        "tasks_refused": tasks.refused,
        "tasks_refused_why": tasks.why,
        "task_submit_slowest_ms": _ms(tasks.slowest_s),
        "tasks_ended": ended,
        "links_lost": after["links_lost"],
        "connect_failures": after["connect_failures"],
    }
    if lowest_online < size + 1:  # the probe is online too
        broke.append(f"only {lowest_online - 1} of {size} online at the lowest")
    if not lags or lags[-1] > HEARTBEAT_S:
        broke.append(f"a heartbeat took {step['lag_max_ms']} ms to be stored")
    if ended < len(tasks.ids) or tasks.refused:
        broke.append(
            f"{len(tasks.ids) - ended} tasks not ended, {tasks.refused} refused ({tasks.why})"
        )
    step["held"] = not broke
    step["broke"] = "; ".join(broke)
    return step


def _pids(setup: Setup) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for replica in setup.replicas:
        assert replica.process is not None
        pids[f"hub {replica.replica_id}"] = [replica.process.pid]
    broker = setup.broker_pid()
    pids["mosquitto"] = [broker] if broker else []
    return pids


async def _capacity(setup: Setup, root: Path) -> list[dict[str, Any]]:
    sizes = [s for s in STEPS if FLEET_MIN <= s <= FLEET_MAX]
    # Past what one broker may hold here (its open files), devices go to brokers bridged
    # to the fleet's: the hub's side is what is measured.
    per_broker = devices_per_broker(DEVICES_PER_WORKER)
    overflow: list[OverflowBroker] = []
    fleet = probe = None
    steps: list[dict[str, Any]] = []
    try:
        for n in range(1, -(-max(sizes) // per_broker)):
            pid = setup.broker_pid()
            assert pid is not None
            overflow.append(
                await start_overflow(
                    setup.broker_paths, setup.broker_port, pid, root / f"overflow-{n}", n
                )
            )
        fleet = Fleet(
            root / "fleet",
            setup.ca_cert,
            setup.ca_key,
            setup.broker_port,
            overflow_ports=tuple(b.port for b in overflow),
            per_broker=per_broker,
        )
        probe = Probe(setup, root / "probe")
        await probe.ready()
        for size in sizes:
            pids = _pids(setup)
            pids["mosquitto"] += [b.process.pid for b in overflow]
            step = await _step(setup, fleet, probe, size, pids)
            step["brokers"] = -(-size // per_broker)
            print(f"# capacity, {setup.name}: {json.dumps(step)}", flush=True)
            steps.append(step)
            if not step["held"]:
                break
    finally:
        if probe is not None:
            await probe.stop()
        if fleet is not None:
            await fleet.stop()
        for broker in overflow:
            broker.stop()
    return steps


async def _back(setup: Setup, fleet: Fleet, size: int, usage: Usage) -> dict[str, Any]:
    """Wait until every device is connected with its hello answered; sample the hub."""
    started = time.monotonic()
    peak_cpu = peak_rss = 0.0
    hub = psutil.Process(setup.replicas[0].process.pid)  # type: ignore[union-attr]
    hub.cpu_percent()
    back = None
    while time.monotonic() - started < BACK_WITHIN_S:
        await asyncio.sleep(1)  # the benchmark's own poll, also its CPU sampling period
        peak_cpu = max(peak_cpu, hub.cpu_percent())
        peak_rss = max(peak_rss, hub.memory_info().rss / 2**20)
        report = await fleet.report()
        if report["answered"] >= size:
            back = time.monotonic() - started
            break
    report = await fleet.report()
    return {
        "back_s": None if back is None else round(back, 1),
        "answered": report["answered"],
        "hub_peak_cpu_percent": round(peak_cpu, 1),
        "hub_peak_rss_mib": round(peak_rss, 1),
        "usage": usage.read(),
    }


async def _storm(setup: Setup, root: Path) -> dict[str, dict[str, Any]]:
    fleet = Fleet(root / "fleet", setup.ca_cert, setup.ca_key, setup.broker_port)
    out: dict[str, dict[str, Any]] = {}
    try:
        await fleet.grow(STORM_DEVICES, RAMP_PER_S)
        settled = await _back(setup, fleet, STORM_DEVICES, Usage(_pids(setup)))
        if settled["back_s"] is None:
            raise RuntimeError(f"the storm's fleet never came up: {settled}")
        broker = setup.broker_pid()
        assert broker is not None
        usage = Usage({n: p for n, p in _pids(setup).items() if n != "mosquitto"})
        os.kill(broker, signal.SIGKILL)  # the hub's supervisor starts it again
        await asyncio.sleep(1)  # let the fleet notice before counting who is back
        out["broker restart"] = await _back(setup, fleet, STORM_DEVICES, usage)
        print(f"# storm, broker restart: {json.dumps(out['broker restart'])}", flush=True)
        usage = Usage(_pids(setup))
        await fleet.cut(30)
        await asyncio.sleep(30)
        out["links cut 30 s"] = await _back(setup, fleet, STORM_DEVICES, usage)
        print(f"# storm, links cut 30 s: {json.dumps(out['links cut 30 s'])}", flush=True)
    finally:
        await fleet.stop()
    return out


def _held(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    held = [s for s in steps if s["held"]]
    return held[-1] if held else None


def _result(name: str, steps: list[dict[str, Any]]) -> list[Result]:
    best = _held(steps)
    last = steps[-1] if steps else {}
    broke = f"; broke at {last['devices']:,}: {last['broke']}" if last and not last["held"] else ""
    if best is None:
        return [Result(f"capacity, {name}: devices held", 0, None, "devices", broke)]
    usage = ", ".join(
        f"{who} {u['cpu_percent']:.0f} % CPU {u['rss_mib']:.0f} MiB"
        for who, u in best["hold_usage"].items()
    )
    return [
        Result(f"capacity, {name}: devices held", best["devices"], None, "devices", usage + broke),
        Result(
            f"  hello answered during a {RAMP_PER_S:g}/s ramp, p99",
            best["hello_p99_ms"] or 0,
            None,
            "ms",
            f"p50 {best['hello_p50_ms']} ms, max {best['hello_max_ms']} ms; target p99 <= 1000",
        ),
        Result(
            "  heartbeat sent to stored, max of the hold",
            best["lag_max_ms"] or 0,
            None,
            "ms",
            f"p50 {best['lag_p50_ms']} ms",
        ),
    ]


async def _run(root: Path) -> list[Result]:
    raise_open_files()  # the broker and the simulator's workers inherit it
    chosen = {c.strip() for c in CONFIGS.split(",")}
    results: list[Result] = []
    held: dict[str, int] = {}
    if "sqlite" in chosen:
        async with sqlite_setup(root / "sqlite") as setup:
            steps = await _capacity(setup, root / "sqlite")
        results += _result(setup.name, steps)
    for count in (1, 2):
        key = "postgresql" if count == 1 else "postgresql-2"
        if key not in chosen:
            continue
        async with postgres_setup(root / key, count) as setup:
            steps = await _capacity(setup, root / key)
        results += _result(setup.name, steps)
        best = _held(steps)
        held[key] = best["devices"] if best else 0
    if "postgresql" in held and "postgresql-2" in held:
        results.append(
            Result(
                "capacity: two PostgreSQL replicas against one",
                held["postgresql-2"],
                held["postgresql"] or None,
                "devices",
                f"raw = one replica; target >= 1.8x (steps capped at {FLEET_MAX:,})",
            )
        )
    if "storm" in chosen:
        async with sqlite_setup(root / "storm") as setup:
            storm = await _storm(setup, root / "storm")
        for what, figures in storm.items():
            results.append(
                Result(
                    f"reconnect storm, {what}: all {STORM_DEVICES:,} back",
                    figures["back_s"] if figures["back_s"] is not None else math.inf,
                    None,
                    "s",
                    f"hub peak {figures['hub_peak_cpu_percent']:.0f} % CPU, "
                    f"{figures['hub_peak_rss_mib']:.0f} MiB; target <= 60 s",
                )
            )
    return results


def run(root: Path) -> list[Result]:
    root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(root))
