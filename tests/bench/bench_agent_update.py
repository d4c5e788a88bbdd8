"""An agent update end to end: DEVICES devices (3; `OUTPOST_BENCH_AGENT_UPDATE_DEVICES`
says otherwise), each running release OLD from a side-by-side install of its own
(PREFIX and data folder) under the launcher (systemd/outpost-launch, in a loop standing
in for systemd), are rolled out release NEW at once (canary share 1.0). Both releases
are built from this checkout with every dependency wheel. Each device reaches the hub's
web endpoint through a relay in this process that counts the bytes it hands on.

Figures, against raw limits measured in the same run on the same machine:
- the roll-out, POST /api/v1/rollouts to `completed` (on every device: download with
  its certificate, checks, install, the new version's selfcheck, switch, restart,
  hello), against as many bare `python -m venv` + `pip install --no-index` of the same
  files at once: the devices share this machine's cores (one alone is in the note);
- per device, the hub's offer (`released_at`) to PREFIX/current naming NEW, against the
  median of those bare installs;
- per device, the downtime: from the last answer of OLD's local API (/v1/status, polled
  every 10 ms from the switch on) to the first of NEW's, against a bare restart of the
  same version through the launcher (SIGTERM, start, until its local API answers), one
  device at a time;
- per device, the bytes it received from the hub's web endpoint during the roll-out
  (TLS records and HTTP headers included) against the size of the release's files for
  this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from edge import selfupdate
from edge.enroll import enroll
from edge.identity import DevicePaths
from hub.app import Hub
from outpost import agentrelease
from tests import agent_releases
from tests.api_client import ApiClient
from tests.bench.common import Result, running_hub
from tests.support import PROFILES, REPO, mint_token

OLD, NEW = "0.98.0", "0.99.0"
MACHINE = platform.machine()
LAUNCH = REPO / "systemd" / "outpost-launch"
DEVICES = int(os.environ.get("OUTPOST_BENCH_AGENT_UPDATE_DEVICES", "3"))
POLL_S = 0.01
# Installs on every device at once share this machine's cores: minutes on a slow one.
UPDATE_S = 600.0


class Launcher:
    """The launcher, started again whenever it exits non-zero, as systemd would."""

    def __init__(self, prefix: Path, data: Path, log: Path) -> None:
        self._argv = [sys.executable, str(LAUNCH), "--prefix", str(prefix), "--data", str(data),
                      "--", "--heartbeat-interval", "1"]  # fmt: skip
        self._log = log
        self.process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with self._log.open("ab") as out:
            while True:
                self.process = await asyncio.create_subprocess_exec(
                    *self._argv, stdout=out, stderr=subprocess.STDOUT, env=env
                )
                if await self.process.wait() == 0:
                    return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()


class Relay:
    """Hands a device's connections on to the hub's web endpoint; counts the bytes the
    hub sends back (what the device downloads, as it comes off the wire)."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self.received = 0
        self._serving: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """End the connections still handed on (a device keeps its connection alive):
        left to asyncio.run's end, their tasks were destroyed pending, with an error."""
        for task in self._serving:
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)

    async def serve(self, device_r: asyncio.StreamReader, device_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        try:
            hub_r, hub_w = await asyncio.open_connection(self._host, self._port)
        except OSError:
            device_w.close()
            return
        try:
            await asyncio.gather(
                self._pump(device_r, hub_w, False), self._pump(hub_r, device_w, True)
            )
        finally:
            for writer in (hub_w, device_w):
                writer.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, counted: bool
    ) -> None:
        try:
            while chunk := await source.read(1 << 16):
                if counted:
                    self.received += len(chunk)
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:  # either side went away: the other is closed after
            return


@dataclasses.dataclass(frozen=True)
class Device:
    paths: DevicePaths
    device_id: str
    prefix: Path
    launcher: Launcher
    relay: Relay
    server: asyncio.Server  # the relay's


@dataclasses.dataclass(frozen=True)
class Followed:
    """One device's roll-out as seen from outside it."""

    switched_at: float  # epoch seconds: PREFIX/current named NEW
    downtime_s: float  # last answer of OLD's local API to the first of NEW's


async def _answering(socket: Path) -> str | None:
    """The version the agent's local API names, or None while it does not answer."""
    try:
        connector = aiohttp.UnixConnector(path=str(socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://agent/v1/status", timeout=aiohttp.ClientTimeout(1)) as r,
        ):
            body = await r.json()
            return str(body["version"])
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def _until(socket: Path, want: str) -> float:
    """Poll until the local API answers naming `want`; the moment, perf_counter."""
    while await _answering(socket) != want:
        await asyncio.sleep(POLL_S)
    return time.perf_counter()


async def _follow(device: Device) -> Followed:
    """Wait for the switch, then time the local API's gap from OLD to NEW. The old agent
    answers until it stops, after the switch: polling from then on misses no gap."""
    current = device.prefix / "current"
    while os.readlink(current) != f"releases/{NEW}":
        await asyncio.sleep(POLL_S)
    switched_at = time.time()
    last_old = time.perf_counter()
    while True:
        found = await _answering(device.paths.socket)
        now = time.perf_counter()
        if found == OLD:
            last_old = now
        elif found == NEW:
            return Followed(switched_at, now - last_old)
        await asyncio.sleep(POLL_S)


def _bare_install(release: Path) -> float:
    """A bare venv and pip install of `release` into a temporary folder; seconds."""
    with tempfile.TemporaryDirectory() as folder:
        venv = Path(folder) / "venv"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "-q",
             "--no-cache-dir", "--disable-pip-version-check",
             "--find-links", str(release / agentrelease.FILES), f"outpost=={NEW}"],
            check=True,
        )  # fmt: skip
        return time.perf_counter() - started


def _bare_installs(release: Path, count: int) -> tuple[float, list[float]]:
    """`count` bare installs at once: the wall time, and each one's."""
    with ThreadPoolExecutor(count) as pool:
        started = time.perf_counter()
        each = list(pool.map(lambda _: _bare_install(release), range(count)))
        return time.perf_counter() - started, each


async def _device(hub: Hub, root: Path, release: Path) -> Device:
    """Enrolled, reaching the hub's web endpoint through its relay, OLD installed side
    by side and current; not started."""
    paths = DevicePaths(root / "device")
    identity = await enroll(await mint_token(hub), paths, PROFILES / "generic.toml")
    relay = Relay("127.0.0.1", hub.config.web_port)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # Its downloads go to hub_url: the relay's address, in the hub certificate's names.
    dataclasses.replace(identity, hub_url=f"https://127.0.0.1:{port}").save(paths)
    prefix = root / "opt"
    manifest = agentrelease.read_folder(release)
    await asyncio.to_thread(selfupdate.install, release, manifest, prefix=prefix, data=paths.root)
    selfupdate.switch(prefix, OLD)
    launcher = Launcher(prefix, paths.root, root / "launcher.log")
    return Device(paths, identity.device_id, prefix, launcher, relay, server)


async def _restart(device: Device) -> float:
    """A bare restart of the running version through the launcher: SIGTERM to the first
    answer of its local API again; seconds."""
    started = time.perf_counter()
    await device.launcher.stop()
    device.launcher.start()
    return await asyncio.wait_for(_until(device.paths.socket, OLD), 120) - started


async def _online(hub: Hub, device_id: str) -> None:
    for _ in range(2400):
        found = await hub.parts.store.device(device_id)
        if found is not None and found.online:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{device_id} never came online")


async def _update(root: Path, releases: dict[str, Path]) -> dict[str, list[float]]:
    async with running_hub(root / "hub") as hub:
        api = ApiClient(hub)
        devices = await asyncio.gather(
            *(_device(hub, root / f"device-{i}", releases[OLD]) for i in range(DEVICES))
        )
        for device in devices:
            device.launcher.start()
        try:
            admin = await api.token("admin")
            for device in devices:
                await asyncio.wait_for(_until(device.paths.socket, OLD), 120)
            restarts = [await _restart(device) for device in devices]
            for device in devices:
                await _online(hub, device.device_id)

            assert (await agent_releases.upload(hub, admin, releases[NEW])).status == 201
            before = [device.relay.received for device in devices]
            follow = [asyncio.create_task(_follow(device)) for device in devices]
            started = time.perf_counter()
            reply = await api.call("POST", "/api/v1/rollouts", token=admin,
                                   body={"agent": NEW, "canary_share": 1.0})  # fmt: skip
            assert reply.status == 201, reply.body
            deadline = started + UPDATE_S
            while True:
                body = (await api.call("GET", f"/api/v1/rollouts/{reply.body['id']}",
                                       token=admin)).body  # fmt: skip
                if body["state"] in ("completed", "halted", "stopped", "superseded"):
                    assert body["state"] == "completed", body
                    break
                assert time.perf_counter() < deadline, body
                await asyncio.sleep(0.05)
            rollout_s = time.perf_counter() - started
            followed = await asyncio.wait_for(asyncio.gather(*follow), 60)
            received = [d.relay.received - b for d, b in zip(devices, before, strict=True)]
        finally:
            for device in devices:
                await device.launcher.stop()
                device.server.close()
                await device.relay.close()
            await api.close()
    progress = {d["device"]: d for d in body["devices"]}
    offer_s, active_s = [], []
    for device, seen in zip(devices, followed, strict=True):
        row = progress[device.device_id]
        offer_s.append(seen.switched_at - row["released_at"])
        active_s.append(row["updated_at"] - seen.switched_at)
    return {
        "rollout": [rollout_s],
        "offer_to_switch": offer_s,
        "switch_to_active": active_s,
        "downtime": [f.downtime_s for f in followed],
        "restart": restarts,
        "received": [float(n) for n in received],
    }


def _each(values: list[float], scale: float, digits: int) -> str:
    return " / ".join(f"{v * scale:.{digits}f}" for v in values)


def run(root: Path) -> list[Result]:
    releases = {v: agent_releases.build(root / v, v, MACHINE) for v in (OLD, NEW)}
    one_s = _bare_install(releases[NEW])
    together_s, bare_each = _bare_installs(releases[NEW], DEVICES)
    f = asyncio.run(_update(root, releases))
    size = sum(e.size for e in agentrelease.read_folder(releases[NEW]).for_platform(MACHINE))
    mib = size / 2**20
    median = statistics.median
    return [
        Result(f"agent update: roll-out, {DEVICES} devices", f["rollout"][0], together_s, "s",
               f"raw = {DEVICES} bare venv + pip --no-index of the same {mib:.1f} MiB at once "
               f"(one alone: {one_s:.1f} s)"),
        Result("  per device: offer to switch, median", median(f["offer_to_switch"]),
               median(bare_each), "s",
               f"raw = those bare installs' median; each: {_each(f['offer_to_switch'], 1, 1)} s; "
               f"then to the hub's `active`: {_each(f['switch_to_active'], 1, 1)} s"),
        Result("  per device: downtime, median", median(f["downtime"]) * 1000,
               median(f["restart"]) * 1000, "ms",
               f"raw = a bare restart through the launcher, one device at a time; each: "
               f"{_each(f['downtime'], 1000, 0)} ms vs {_each(f['restart'], 1000, 0)} ms"),
        Result("  per device: downloaded, median", median(f["received"]) / 2**20, mib, "MiB",
               f"raw = the release's files for {MACHINE}; each: "
               f"{_each(f['received'], 2**-20, 2)} MiB off the wire (TLS, headers)"),
    ]  # fmt: skip
