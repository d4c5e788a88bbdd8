"""The demo's sites: a link per site that the demo can cut, and programs on each device
that keep producing results and asking the agent's models for inferences, all on one
background event loop."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import random
import ssl
import statistics
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np

from scripts.model_data import surface_images, vibration_windows

# What each demo sensor feeds to which model: the generators the models were trained on.
SENSORS = {
    "vibration-anomaly": vibration_windows,
    "surface-defect": surface_images,
}


class SiteLink:
    """A TCP relay standing for a site's uplink: agents reach the broker through it."""

    def __init__(self, broker_port: int) -> None:
        self._broker_port = broker_port
        self._up = True
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._up = False
        for writer in list(self._pipes):
            writer.transport.abort()

    def restore(self) -> None:
        self._up = True

    @property
    def up(self) -> bool:
        return self._up

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._broker_port)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        self._pipes -= {writer, up_writer}

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


class Producer:
    """A program on a device: posts a few results a second to the agent's local API."""

    def __init__(self, socket: Path, name: str, log: Path) -> None:
        self.socket = socket
        self._name = name
        self.log = log  # one line per batch the agent confirmed: `confirmed FIRST-LAST`
        self.confirmed = 0
        self.refused = 0
        self.stopped = False

    async def run(self) -> None:
        rng = random.Random(self._name)  # noqa: S311 - made-up sensor readings
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            n = 0
            while not self.stopped:
                batch = [
                    {"source": self._name, "n": n + i, "vibration_rms": round(rng.gauss(1, 0.2), 3)}
                    for i in range(5)
                ]
                n += len(batch)
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(
                        "http://agent/v1/records/results", json={"records": batch}
                    ) as response:
                        if response.status == 201:
                            self.confirmed += len(batch)
                            with self.log.open("a") as log:
                                log.write(f"confirmed {n - len(batch)}-{n - 1}\n")
                        else:
                            self.refused += len(batch)
                await asyncio.sleep(1)  # the sensor's own pace

    async def status(self) -> dict[str, Any]:
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://agent/v1/status") as response,
        ):
            body: dict[str, Any] = await response.json()
            return body


class SensorProgram:
    """A program on a device that asks the agent's model about each new reading, twice a
    second, over the local API (msgpack, the reading as raw float32 bytes). Most readings
    are normal; the agent records the flagged ones as results for the hub."""

    def __init__(self, socket: Path, model: str, seed: int) -> None:
        self._socket = socket
        self.model = model
        self._rng = np.random.default_rng(seed)
        self.inferences = 0
        self.flagged = 0
        self.failed = 0
        self.last = "-"
        self._waits: collections.deque[float] = collections.deque(maxlen=200)  # seconds

    @property
    def wait_p50_ms(self) -> float | None:
        """The median of this program's last 200 waits for an answer (None before one)."""
        return statistics.median(self._waits) * 1000 if self._waits else None

    def _reading(self) -> np.ndarray:
        make = SENSORS[self.model]
        want_normal = self._rng.random() < 0.8
        while True:
            x, y = make(1, self._rng)
            if (y[0] == 0) == want_normal:
                reading: np.ndarray = x[0]
                return reading

    async def run(self) -> None:
        connector = aiohttp.UnixConnector(path=str(self._socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                body = msgspec.msgpack.encode({"input": self._reading().astype("<f4").tobytes()})
                with contextlib.suppress(aiohttp.ClientError):
                    asked = time.perf_counter()
                    async with session.post(
                        f"http://agent/v1/infer/{self.model}",
                        data=body,
                        headers={"Content-Type": "application/msgpack"},
                    ) as response:
                        answer = msgspec.msgpack.decode(await response.read())
                        if response.status == 200:
                            self._waits.append(time.perf_counter() - asked)
                            self.inferences += 1
                            self.flagged += answer["recorded"] is not None
                            self.last = f"{answer['label']} {answer['confidence']:.2f}"
                        else:
                            self.failed += 1
                await asyncio.sleep(0.5)  # the sensor's own pace


class TaskFeeder:
    """An operator's program: submits a batch of tasks to the hub every few seconds
    (vibration windows for any device that has the model, surface images for the
    cameras), with mixed priorities, over the HTTPS API."""

    def __init__(self, url: str, ca: Path, token: str) -> None:
        self._url = url
        self._context = ssl.create_default_context(cafile=str(ca))
        self._headers = {"Authorization": f"Bearer {token}"}
        self._rng = np.random.default_rng(7)
        self.submitted = 0
        self.refused = 0

    def _batch(self) -> list[dict[str, Any]]:
        windows, _ = vibration_windows(16, self._rng)
        images, _ = surface_images(4, self._rng)
        vib = [
            {
                "model": "vibration-anomaly",
                "input": np.round(w, 4).tolist(),
                "priority": int(self._rng.integers(0, 10)),
                "deadline_s": 120,
                "lease_s": 30,
            }
            for w in windows
        ]
        cams = [
            {
                "model": "surface-defect",
                # An image goes as the tensor's bytes (float32, C order), not as lists.
                "input_b64": base64.b64encode(np.asarray(i, "<f4").tobytes()).decode(),
                "priority": 7,
                "deadline_s": 120,
                "lease_s": 30,
                "target": {"selector": {"group": "cameras"}},
            }
            for i in images
        ]
        return vib + cams

    async def run(self) -> None:
        async with aiohttp.ClientSession(headers=self._headers) as session:
            while True:
                tasks = self._batch()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(
                        f"{self._url}/api/v1/tasks", json={"tasks": tasks}, ssl=self._context
                    ) as response:
                        if response.status == 202:
                            self.submitted += len(tasks)
                        else:
                            self.refused += len(tasks)
                await asyncio.sleep(2)  # the operator's own pace


class Background:
    """One event loop in a thread, for the links and producers of every site."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Run a coroutine on the background loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine on the background loop, held until it ends: the loop keeps
        only weak references to its tasks, so one that waits on nothing else (the bus
        consumer) was collected mid-run ("Task was destroyed but it is pending!")."""

        def start() -> None:
            task = self.loop.create_task(coroutine)
            self._tasks.add(task)
            task.add_done_callback(ended)

        def ended(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled():
                # Retrieved, as run_coroutine_threadsafe did: a part that fails shows in
                # the demo's figures and verdict, not as a traceback over the fleet table.
                task.exception()

        self.loop.call_soon_threadsafe(start)

    def call(self, fn: Any) -> None:
        self.loop.call_soon_threadsafe(fn)
