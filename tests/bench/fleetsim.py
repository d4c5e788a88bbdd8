"""A light fleet simulator for the capacity benchmark: thousands of devices per process,
each a real mTLS MQTT connection speaking the wire contract (status, hello, a heartbeat
every interval, task assignments accepted and their results uploaded), spread over
several worker processes because one process cannot drive more than a few thousand.

Each device is a hand-written MQTT 3.1.1 client on an `asyncio.Protocol` (CONNECT with
a last will, SUBSCRIBE, PUBLISH at QoS 1 both ways, PUBACK): no per-client thread,
timer or housekeeping loop, as a paho/aiomqtt client has. Memory is another matter: each
device's own TLS context (its certificate) makes about 330 KB a device (measured: 4.9 GB
for 15,000), which a machine with 24 GiB can afford. The simulator must leave the
machine's cores to the hub and the broker it measures; it is a load generator, not part
of the product.

A device reconnects as the agent does (`outpost.backoff.Reconnect`, seeded with its id,
spread over `reconnect_spread_s`), so a broker restart brings the fleet back the way a
real fleet would come back.

`Fleet` in the benchmark's process drives the workers through pipes: grow to N devices
at R per second, cut every link for a while, report. Nothing here asserts: figures go
back to the benchmark, which prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import resource
import secrets
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.fleet import pki
from outpost import files, tls, wire
from outpost.backoff import Reconnect

DEVICES_PER_WORKER = 3_000
KEEPALIVE_S = 60
SIM_MODEL = "sim-model"
# As the agent (`sync.ack_timeout_s`): a hello unanswered this long is said again (its
# answer can be lost, say while the hub's own link comes back after a broker restart).
HELLO_AGAIN_S = 15.0


# ------------------------------------------------------------------ MQTT 3.1.1 packets


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _length(len(body)) + body


def connect_packet(client_id: str, will_topic: str, will: bytes) -> bytes:
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session; a will at QoS 1, retained
    header = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE_S)
    return _packet(
        0x10, header + _str(client_id) + _str(will_topic) + struct.pack("!H", len(will)) + will
    )


def publish_packet(topic: str, payload: bytes, packet_id: int, *, retain: bool = False) -> bytes:
    return _packet(0x32 | retain, _str(topic) + struct.pack("!H", packet_id) + payload)


def publish_qos0_packet(topic: str, payload: bytes) -> bytes:
    return _packet(0x30, _str(topic) + payload)


def subscribe_packet(packet_id: int, topic_filter: str) -> bytes:
    return _packet(0x82, struct.pack("!H", packet_id) + _str(topic_filter) + b"\x01")


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


def answer_tasks(body: wire.Tasks, last_seq: int) -> tuple[bytes, bytes, int]:
    """A simulated device's answer to assignments, without running a model: the
    `task_state` accepting them, the `records` batch of their results numbered after
    `last_seq`, and the new last sequence number."""
    updates = [
        wire.TaskUpdate(task_id=a.task_id, attempt=a.attempt, state="accepted") for a in body.tasks
    ]
    now = time.time()
    rows = [
        (
            last_seq + 1 + n,
            now,
            {
                "kind": "task",
                "task_id": a.task_id,
                "attempt": a.attempt,
                "status": "succeeded",
                "label": "normal",
                "confidence": 0.9,
                "latency_ms": 0.1,
            },
        )
        for n, a in enumerate(body.tasks)
    ]
    seq = last_seq + len(rows)
    records = wire.Records.pack("results", last_seq + 1, seq, rows)
    return (
        wire.encode("task_state", wire.TaskState(updates)),
        wire.encode("records", records),
        seq,
    )


class _Link(asyncio.Protocol):
    """One device's connection: splits the byte stream into packets for its device."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            length, shift, index = 0, 0, 1
            while True:
                if index >= len(self.buffer):
                    return  # the length itself is not complete yet
                byte = self.buffer[index]
                length |= (byte & 0x7F) << shift
                shift += 7
                index += 1
                if not byte & 0x80:
                    break
            if len(self.buffer) < index + length:
                return
            first = self.buffer[0]
            body = bytes(self.buffer[index : index + length])
            del self.buffer[: index + length]
            self.device.on_packet(first, body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


# ------------------------------------------------------------------ one device


@dataclass
class Counters:
    """What one worker's devices did since the last report (latencies) or in all."""

    connected: int = 0  # links up now (CONNACK received, not lost)
    answered: int = 0  # of those, the ones whose hello was answered
    connects: int = 0
    connect_failures: int = 0
    links_lost: int = 0
    tasks_done: int = 0
    hello_latencies: list[float] = field(default_factory=list)


class SimDevice:
    """A device without a model: it says hello, beats, and answers every task."""

    def __init__(self, fleet: Worker, device_id: str, context: ssl.SSLContext) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.context = context
        self.backoff = Reconnect(cap=60.0, spread=fleet.spec.reconnect_spread_s, seed=device_id)
        self.link: _Link | None = None
        self.connack: asyncio.Future[int] | None = None
        self.hello_sent: float | None = None  # when the unanswered hello went out
        self.answered = False
        self.packet_id = 0
        self.seq = 0
        self.conn = ""
        self.held_until = 0.0  # a link cut: no reconnect before then (monotonic)

    def _up(self, kind: str) -> str:
        return wire.up_topic(self.device_id, kind)

    def _next_id(self) -> int:
        self.packet_id = self.packet_id % 65535 + 1
        return self.packet_id

    def publish(self, kind: str, payload: bytes, *, retain: bool = False) -> None:
        if self.link is not None:
            self.link.send(publish_packet(self._up(kind), payload, self._next_id(), retain=retain))

    def beat(self) -> None:
        """A heartbeat, at QoS 0 as the agent sends it."""
        if self.link is not None:
            payload = self.fleet.heartbeat(self.conn)
            self.link.send(publish_qos0_packet(self._up("heartbeat"), payload))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        counters = self.fleet.counters
        while True:
            if time.monotonic() < self.held_until:  # the uplink is down: this try fails
                counters.connect_failures += 1
                await asyncio.sleep(self.backoff.next_delay())
                continue
            link = _Link(self)
            self.connack = loop.create_future()
            self.conn = secrets.token_hex(4)
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda link=link: link,  # type: ignore[misc]
                        "127.0.0.1",
                        self.fleet.spec.broker_port,
                        ssl=self.context,
                        # Its own source address per worker: loopback has ~28,000
                        # ephemeral ports per (source, destination) pair.
                        local_addr=(f"127.0.0.{self.fleet.spec.index + 2}", 0),
                    ),
                    30,
                )
                self.link = link
                status = wire.encode("status", wire.Status(conn=self.conn, online=False))
                link.send(connect_packet(self.device_id, self._up("status"), status))
                if await asyncio.wait_for(self.connack, 30) != 0:
                    raise ConnectionRefusedError("the broker refused the connection")
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
                counters.connect_failures += 1
                if link.transport is not None:
                    link.transport.abort()
                self.link = None
                await asyncio.sleep(self.backoff.next_delay())
                continue
            counters.connects += 1
            counters.connected += 1
            self.backoff.reset()
            self._greet()
            beats = asyncio.create_task(self._beat())
            try:
                await link.closed
            finally:
                beats.cancel()
                counters.connected -= 1
                counters.answered -= self.answered
                counters.links_lost += 1
                self.link, self.answered, self.hello_sent = None, False, None
            await asyncio.sleep(self.backoff.next_delay())

    def _greet(self) -> None:
        assert self.link is not None
        self.link.send(subscribe_packet(self._next_id(), wire.down_topic(self.device_id, "#")))
        self.publish("status", wire.encode("status", wire.Status(self.conn, True)), retain=True)
        self.hello_sent = time.monotonic()
        self.publish("hello", self.fleet.hello(self.conn))
        self.fleet.loop_later(HELLO_AGAIN_S, self._hello_again)

    def _hello_again(self) -> None:
        if self.hello_sent is not None and self.link is not None:
            # The answer time still counts from the first hello of this connection.
            self.publish("hello", self.fleet.hello(self.conn))
            self.fleet.loop_later(HELLO_AGAIN_S, self._hello_again)

    async def _beat(self) -> None:
        interval = self.fleet.spec.heartbeat_s
        if not self.fleet.spec.beats:
            return  # the benchmark's probe: it beats when the benchmark says
        # A random phase: devices that connected together do not beat together.
        await asyncio.sleep(self.fleet.random.uniform(0, interval))
        while True:
            self.beat()
            await asyncio.sleep(interval)

    def on_packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2 and self.connack is not None and not self.connack.done():  # CONNACK
            self.connack.set_result(body[1] if len(body) > 1 else 255)
        elif kind == 3:  # PUBLISH
            qos = (first >> 1) & 3
            (topic_length,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + topic_length].decode()
            start = 2 + topic_length
            if qos:
                (packet_id,) = struct.unpack_from("!H", body, start)
                start += 2
                if self.link is not None:
                    self.link.send(puback_packet(packet_id))
            self._on_message(topic.rsplit("/", 1)[-1], body[start:])

    def _on_message(self, kind: str, payload: bytes) -> None:
        if kind == "ack" and self.hello_sent is not None:
            self.fleet.counters.hello_latencies.append(time.monotonic() - self.hello_sent)
            self.fleet.counters.answered += 1
            self.hello_sent, self.answered = None, True
        elif kind == "tasks":
            body = wire.decode(payload, kinds=wire.DOWN_KINDS).body
            assert isinstance(body, wire.Tasks)
            self._answer(body)

    def _answer(self, body: wire.Tasks) -> None:
        task_state, records, self.seq = answer_tasks(body, self.seq)
        self.publish("task_state", task_state)
        self.publish("records", records)
        self.fleet.counters.tasks_done += len(body.tasks)

    def cut(self, seconds: float) -> None:
        """Drop the link now and fail every try for `seconds` (the site lost its uplink):
        the device comes back at its first try after that, as its back-off has it."""
        self.held_until = time.monotonic() + seconds
        if self.link is not None and self.link.transport is not None:
            self.link.transport.abort()


# ------------------------------------------------------------------ one worker process


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    folder: Path  # where this worker writes its devices' certificates
    ca_cert: Path
    ca_key: Path
    broker_port: int
    heartbeat_s: float
    reconnect_spread_s: float
    beats: bool = True


class Worker:
    """The devices of one process, driven by commands from the benchmark's pipe."""

    def __init__(self, spec: WorkerSpec) -> None:
        import random

        self.spec = spec
        self.random = random.Random(spec.index)  # heartbeat phases
        self.counters = Counters()
        self.devices: list[SimDevice] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0  # devices started, the first of `devices`
        spec.folder.mkdir(parents=True, exist_ok=True)
        self._ca_key, self._ca_cert = pki.load_ca(
            spec.ca_key.read_bytes(), spec.ca_cert.read_bytes()
        )
        key = pki.new_ec_key()  # one key for this worker's devices: issuing is the cost
        self._public_key = key.public_key()
        self._key_path = spec.folder / "devices.key"
        files.write_new(self._key_path, pki.key_pem(key))
        capabilities = wire.Capabilities(cores=1, memory_bytes=1 << 30, disk_bytes=8 << 30)
        model = wire.ModelInfo(name=SIM_MODEL, version="1.0.0", sha256="", state="ready")
        self._hello_fields: dict[str, Any] = {
            "agent_version": "sim",
            "profile": "sim",
            "heartbeat_interval": spec.heartbeat_s,
            "capabilities": capabilities,
            "runtime": "none",
            "models": [model],
            "task_slots": 1,
        }
        self._load = wire.Load(
            cpu_percent=5, memory_percent=20, disk_percent=30, rss_bytes=40 << 20
        )
        self._started = time.monotonic()

    def loop_later(self, seconds: float, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(seconds, callback)

    def hello(self, conn: str) -> bytes:
        return wire.encode("hello", wire.Hello(conn=conn, **self._hello_fields))

    def heartbeat(self, conn: str) -> bytes:
        beat = wire.Heartbeat(
            conn=conn,
            uptime_s=time.monotonic() - self._started,
            heartbeat_interval=self.spec.heartbeat_s,
            load=self._load,
            tasks=wire.TaskLoad(queued=0, running=0),
        )
        return wire.encode("heartbeat", beat)

    def _new_device(self) -> SimDevice:
        device_id = f"dev-sim{self.spec.index:02d}{len(self.devices):06d}"
        issued = pki.issue(
            self._ca_key, self._ca_cert, common_name=device_id, public_key=self._public_key, days=2
        )
        cert = self.spec.folder / f"{device_id}.crt"
        cert.write_bytes(issued.pem)
        context = tls.client_context(self.spec.ca_cert, cert, self._key_path)
        device = SimDevice(self, device_id, context)
        self.devices.append(device)
        return device

    async def prepare(self, total: int) -> None:
        """Make devices up to `total` without connecting them: a certificate and a TLS
        context each, the simulator's dearest work, kept out of a timed ramp (making them
        during it saturated a worker and delayed every hello it measured)."""
        while len(self.devices) < total:
            self._new_device()
            if len(self.devices) % 50 == 0:
                await asyncio.sleep(0)  # let the running devices beat meanwhile

    async def grow(self, total: int, per_second: float) -> None:
        """Start devices until this worker runs `total`, `per_second` of them a second."""
        await self.prepare(total)
        started = time.monotonic()
        first = self.running
        while self.running < total:
            due = started + (self.running - first) / per_second
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            self.tasks.append(asyncio.create_task(self.devices[self.running].run()))
            self.running += 1

    def report(self) -> dict[str, Any]:
        counters = self.counters
        out = {
            "devices": self.running,
            "connected": counters.connected,
            "answered": counters.answered,
            "connects": counters.connects,
            "connect_failures": counters.connect_failures,
            "links_lost": counters.links_lost,
            "tasks_done": counters.tasks_done,
            "hello_latencies": counters.hello_latencies,
        }
        counters.hello_latencies = []
        return out


def _worker_main(spec: WorkerSpec, pipe: multiprocessing.connection.Connection) -> None:
    raise_open_files()
    asyncio.run(_serve(Worker(spec), pipe))


async def _serve(worker: Worker, pipe: multiprocessing.connection.Connection) -> None:
    growing: asyncio.Task[None] | None = None
    while True:
        command, *args = await asyncio.to_thread(pipe.recv)
        if command == "prepare":
            await worker.prepare(*args)
            pipe.send(None)
        elif command == "grow":
            if growing is not None:
                growing.cancel()
            growing = asyncio.create_task(worker.grow(*args))
            pipe.send(None)
        elif command == "report":
            pipe.send(worker.report())
        elif command == "cut":
            (seconds,) = args
            for device in worker.devices:
                device.cut(seconds)
            pipe.send(None)
        elif command == "stop":
            for task in worker.tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*worker.tasks, return_exceptions=True)
            pipe.send(None)
            return


def raise_open_files(wanted: int = 200_000) -> int:
    """Lift this process's open-file limit (one socket per device; children such as the
    broker inherit it): to `wanted` where allowed (root), else to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
        return wanted
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ------------------------------------------------------------------ the fleet


class Fleet:
    """Worker processes started as the fleet grows, `DEVICES_PER_WORKER` devices each."""

    def __init__(
        self,
        folder: Path,
        ca_cert: Path,
        ca_key: Path,
        broker_port: int,
        *,
        heartbeat_s: float = 10.0,
        reconnect_spread_s: float = 10.0,
        overflow_ports: tuple[int, ...] = (),
        per_broker: int = 1 << 30,
    ) -> None:
        """Devices connect to `broker_port`, `per_broker` of them (a multiple of
        `DEVICES_PER_WORKER`); the next ones to each of `overflow_ports` in turn (see
        tests/bench/overflow.py)."""
        self.folder = folder
        ports = (broker_port, *overflow_ports)
        workers_per_broker = max(1, per_broker // DEVICES_PER_WORKER)
        self._spec: Callable[[int], WorkerSpec] = lambda index: WorkerSpec(
            index,
            folder / f"worker-{index}",
            ca_cert,
            ca_key,
            ports[min(index // workers_per_broker, len(ports) - 1)],
            heartbeat_s,
            reconnect_spread_s,
        )
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self.size = 0

    def _call(self, pipe: multiprocessing.connection.Connection, *command: Any) -> Any:
        pipe.send(command)
        return pipe.recv()

    async def prepare(self, total: int) -> None:
        """Start the workers `total` devices need and have each make its share of them
        (certificates, TLS contexts), all at once, before a ramp is timed."""
        needed = -(-total // DEVICES_PER_WORKER)
        while len(self._workers) < needed:
            here, there = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main, args=(self._spec(len(self._workers)), there), daemon=True
            )
            process.start()
            self._workers.append((process, here))
        await asyncio.gather(
            *(
                asyncio.to_thread(self._call, pipe, "prepare", share)
                for (_, pipe), share in zip(self._workers, self._shares(total), strict=True)
                if share
            )
        )

    async def grow(self, total: int, per_second: float) -> None:
        """Ramp the fleet to `total` devices at `per_second` (returns once all started)."""
        await self.prepare(total)
        shares = self._shares(total)
        adding = [max(0, share - self._count(n)) for n, share in enumerate(shares)]
        added = sum(adding) or 1
        for (_, pipe), share, more in zip(self._workers, shares, adding, strict=True):
            if more:
                await asyncio.to_thread(self._call, pipe, "grow", share, per_second * more / added)
        self.size = total
        await asyncio.sleep(sum(adding) / per_second)

    def _shares(self, total: int) -> list[int]:
        return [
            min(DEVICES_PER_WORKER, max(0, total - n * DEVICES_PER_WORKER))
            for n in range(len(self._workers))
        ]

    def _count(self, index: int) -> int:
        return min(DEVICES_PER_WORKER, max(0, self.size - index * DEVICES_PER_WORKER))

    async def report(self) -> dict[str, Any]:
        """Every worker's counters summed; hello latencies since the last report, sorted."""
        total: dict[str, Any] = {"hello_latencies": []}
        for _, pipe in self._workers:
            part = await asyncio.to_thread(self._call, pipe, "report")
            for key, value in part.items():
                total[key] = (
                    total.get(key, 0) + value if key != "hello_latencies" else total[key] + value
                )
        total["hello_latencies"].sort()
        return total

    async def cut(self, seconds: float) -> None:
        """Every device drops its link now and stays away `seconds`."""
        for _, pipe in self._workers:
            await asyncio.to_thread(self._call, pipe, "cut", seconds)

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._workers]

    async def stop(self) -> None:
        for process, pipe in self._workers:
            with contextlib.suppress(OSError, EOFError):
                await asyncio.wait_for(asyncio.to_thread(self._call, pipe, "stop"), 30)
            process.join(5)
            if process.is_alive():
                process.kill()
        self._workers = []


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]
