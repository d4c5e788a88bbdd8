"""An agent update end to end: one device running release OLD from a side-by-side
install under the launcher (systemd/outpost-launch, in a loop standing in for systemd)
is rolled out release NEW (both built from this checkout with every dependency wheel).

Figures, against raw limits measured in the same run:
- the roll-out, POST /api/v1/rollouts to `completed` (download with the device
  certificate, checks, install, the new version's selfcheck, switch, restart, hello),
  against a bare `python -m venv` + `pip install --no-index` of the same files;
- the agent's downtime, from the last answer of OLD's local API to the first of NEW's,
  against a bare restart of the same version through the launcher (SIGTERM, start,
  until its local API answers);
- bytes the device downloaded against the release's size for its machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from edge import selfupdate
from edge.enroll import enroll
from edge.identity import DevicePaths, Identity
from hub.app import Hub
from outpost import agentrelease
from tests import agent_releases
from tests.api_client import ApiClient
from tests.bench.common import Result, running_hub
from tests.support import PROFILES, REPO, mint_token

OLD, NEW = "0.98.0", "0.99.0"
MACHINE = platform.machine()
LAUNCH = REPO / "systemd" / "outpost-launch"
POLL_S = 0.01


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


async def _until(socket: Path, want: str | None) -> float:
    """Poll until the local API answers naming `want` (None: any); the moment, perf."""
    while True:
        found = await _answering(socket)
        if found is not None and (want is None or found == want):
            return time.perf_counter()
        await asyncio.sleep(POLL_S)


async def _watch_gap(socket: Path, old: str, new: str) -> float:
    """The downtime: last answer naming `old` to the first naming `new`."""
    last_old = time.perf_counter()
    while True:
        found = await _answering(socket)
        now = time.perf_counter()
        if found == old:
            last_old = now
        elif found == new:
            return now - last_old
        await asyncio.sleep(POLL_S)


def _bare_install(release: Path) -> float:
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


async def _update(root: Path, releases: dict[str, Path]) -> dict[str, float]:
    async with running_hub(root / "hub") as hub:
        api = ApiClient(hub)
        device = DevicePaths(root / "device")
        await enroll(await mint_token(hub), device, PROFILES / "generic.toml")
        prefix = root / "opt"
        manifest = agentrelease.read_folder(releases[OLD])
        await asyncio.to_thread(
            selfupdate.install, releases[OLD], manifest, prefix=prefix, data=device.root
        )
        selfupdate.switch(prefix, OLD)
        launcher = Launcher(prefix, device.root, root / "launcher.log")
        launcher.start()
        try:
            admin = await api.token("admin")
            await _online(hub, Identity.load(device).device_id)
            await asyncio.wait_for(_until(device.socket, None), 120)
            # A bare restart of the same version: the floor of any restart.
            assert launcher.process is not None
            stopped = time.perf_counter()
            launcher.process.send_signal(signal.SIGTERM)
            await launcher.process.wait()  # 0: the loop ends; start it again
            launcher.start()
            restart_s = await asyncio.wait_for(_until(device.socket, None), 120) - stopped
            await _online(hub, Identity.load(device).device_id)

            assert (await agent_releases.upload(hub, admin, releases[NEW])).status == 201
            gap = asyncio.create_task(_watch_gap(device.socket, OLD, NEW))
            started = time.perf_counter()
            reply = await api.call("POST", "/api/v1/rollouts", token=admin,
                                   body={"agent": NEW, "canary_share": 1.0})  # fmt: skip
            while True:
                body = (await api.call("GET", f"/api/v1/rollouts/{reply.body['id']}",
                                       token=admin)).body  # fmt: skip
                if body["state"] in ("completed", "halted", "stopped"):
                    assert body["state"] == "completed", body
                    break
                await asyncio.sleep(0.05)
            rollout_s = time.perf_counter() - started
            downtime_s = await asyncio.wait_for(gap, 60)
        finally:
            await launcher.stop()
            await api.close()
    size = sum(f.size for f in agentrelease.read_folder(releases[NEW]).for_platform(MACHINE))
    return {"rollout": rollout_s, "downtime": downtime_s, "restart": restart_s, "size": size}


async def _online(hub: Hub, device_id: str) -> None:
    for _ in range(2400):
        found = await hub.parts.store.device(device_id)
        if found is not None and found.online:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{device_id} never came online")


def run(root: Path) -> list[Result]:
    releases = {v: agent_releases.build(root / v, v, MACHINE) for v in (OLD, NEW)}
    bare_s = _bare_install(releases[NEW])
    f = asyncio.run(_update(root, releases))
    mib = f["size"] / 2**20
    return [
        Result("agent update: roll-out to completed, 1 device", f["rollout"], bare_s, "s",
               f"raw = bare venv + pip --no-index of the same {mib:.1f} MiB"),
        Result("  downtime, last answer of old to first of new", f["downtime"] * 1000,
               f["restart"] * 1000, "ms", "raw = a bare restart through the launcher"),
    ]  # fmt: skip
