"""An agent release rolled out end to end, with real parts: releases built from this
checkout (scripts/build_agent_release.py, every dependency wheel; the run's one build,
renumbered: tests/agent_releases.py), uploaded over the API, rolled out by the hub to a
real agent that runs under the real launcher (systemd/outpost-launch) from a side-by-side
install, the test's loop standing in for systemd's Restart=on-failure.

- A good release: the agent downloads it with its certificate, checks it, installs it
  beside the running one, switches, exits to be restarted into it; the new version's
  hello completes the roll-out.
- A release that installs (its selfcheck passes) but will not come up: the launcher
  goes back to the previous version after its attempts, that version tells the hub,
  and the roll-out halts; the device never tries the bad version again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge import selfupdate
from edge.identity import DevicePaths
from hub.app import Hub
from outpost import agentrelease
from tests import agent_releases
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import REPO, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OLD, NEW, BAD = "0.98.0", "0.99.0", "0.99.1"
LAUNCH = REPO / "systemd" / "outpost-launch"
# Installing a release (a venv, ~40 wheels, the new version's selfcheck) and restarting
# take tens of seconds here: minutes on a slow machine.
UPDATE_S = 300.0


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Release folders OLD and NEW of this checkout, and BAD: NEW with an outpost wheel
    whose agent exits before it is ready (its selfcheck passes)."""
    root = tmp_path_factory.mktemp("agent-releases")
    for version in (OLD, NEW):
        agent_releases.of_this_checkout(tmp_path_factory, root / version, version)
    agent_releases.renumbered(root / NEW, root / BAD, BAD, patch=_exits_before_ready)
    return {v: root / v for v in (OLD, NEW, BAD)}


def _exits_before_ready(name: str, data: bytes) -> bytes:
    if name != "edge/agent.py":
        return data
    broken = data.replace(
        b'        """Run until cancelled: open the store, serve the local API, '
        b'connect forever."""\n',
        b'        """A broken build."""\n        raise SystemExit(3)\n',
    )
    assert b"SystemExit(3)" in broken
    return broken


class Launched:
    """The launcher run as systemd would: started again whenever it exits non-zero."""

    def __init__(self, prefix: Path, data: Path, log: Path) -> None:
        self.prefix, self.data, self.log = prefix, data, log
        self.codes: list[int] = []
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        with self.log.open("ab") as out:
            while len(self.codes) < 12:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, str(LAUNCH), "--prefix", str(self.prefix),
                    "--data", str(self.data), "--deadline", "120", "--attempts", "2",
                    "--", "--heartbeat-interval", "0.5", "--log-level", "debug",
                    stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )  # fmt: skip
                code = await self._process.wait()
                self.codes.append(code)
                if code == 0:
                    return

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()  # the launcher passes it on to the agent
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
async def launched(tmp_path: Path) -> AsyncIterator[list[Launched]]:
    started: list[Launched] = []
    yield started
    for one in started:
        await one.stop()


async def _running_old(
    releases: dict[str, Path], enroll_device: Enroller, tmp_path: Path, launched: list[Launched]
) -> tuple[DevicePaths, str, Path, Launched]:
    """A device running OLD from PREFIX/releases/OLD under the launcher, and online."""
    paths, identity = await enroll_device()
    prefix = tmp_path / "opt-outpost"
    manifest = agentrelease.read_folder(releases[OLD])
    await asyncio.to_thread(
        selfupdate.install, releases[OLD], manifest, prefix=prefix, data=paths.root
    )
    selfupdate.switch(prefix, OLD)
    runner = Launched(prefix, paths.root, tmp_path / "launcher.log")
    launched.append(runner)
    runner.start()
    return paths, identity.device_id, prefix, runner


async def _agent_version(api: ApiClient, token: str, device_id: str) -> str | None:
    reply = await api.call("GET", f"/api/v1/devices/{device_id}", token=token)
    assert reply.status == 200, reply.body
    return reply.body["agent_version"] if reply.body["online"] else None


async def test_a_release_rolls_out_then_one_that_will_not_come_up_is_rolled_back(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    releases: dict[str, Path],
    tmp_path: Path,
    launched: list[Launched],
) -> None:
    """One device through both: OLD to NEW, then NEW to BAD and back. (Two tests, each
    with its own device installing OLD first, cost the suite a venv and an agent more.)"""
    admin = await api.token("admin")
    paths, device_id, prefix, runner = await _running_old(
        releases, enroll_device, tmp_path, launched
    )

    async def on(version: str) -> bool:
        return await _agent_version(api, admin, device_id) == version

    async def rollout(version: str, until: str) -> dict[str, Any]:
        """Upload `version` and roll it out to the device; the roll-out once `until`."""
        uploaded = await agent_releases.upload(hub, admin, releases[version])
        assert uploaded.status == 201, uploaded.body
        assert uploaded.body["version"] == version
        started = await api.call(
            "POST", "/api/v1/rollouts", token=admin, body={"agent": version, "canary_share": 1.0}
        )
        assert started.status == 201, started.body
        assert started.body["kind"] == "agent"

        async def reached() -> dict[str, Any]:
            reply = await api.call("GET", f"/api/v1/rollouts/{started.body['id']}", token=admin)
            body: dict[str, Any] = reply.body
            if until == "completed":
                assert body["state"] not in ("halted", "superseded"), body
            return body if body["state"] == until else {}

        return await eventually(reached, timeout=UPDATE_S, every=0.5, what=f"{version} {until}")

    # A good release: downloaded, installed beside the running one, switched to.
    await eventually(lambda: on(OLD), timeout=UPDATE_S, what=f"{OLD} online")
    done = await rollout(NEW, "completed")
    assert [(d["device"], d["state"]) for d in done["devices"]] == [(device_id, "active")]
    assert await on(NEW)
    assert os.readlink(prefix / "current") == f"releases/{NEW}"
    assert os.readlink(prefix / "previous") == f"releases/{OLD}"
    assert (paths.root / "ready").read_text() == NEW
    log = runner.output()
    assert f"agent {NEW} installed and switched to: restarting" in log, log
    assert not (paths.root / "agent-update").exists() or not any(
        (paths.root / "agent-update").iterdir()
    )  # the downloads went once installed

    # A release that installs (its selfcheck passes) but exits before it is ready: the
    # launcher goes back to NEW after its attempts, NEW tells the hub, the roll-out halts.
    rollbacks = runner.codes.count(1)
    halted = await rollout(BAD, "halted")
    assert f"canary {device_id} rolled back" in halted["reason"], halted
    assert "exited with status 3 before it was ready" in halted["reason"], halted
    assert os.readlink(prefix / "current") == f"releases/{NEW}"
    await eventually(lambda: on(NEW), timeout=UPDATE_S, what=f"{NEW} back online")
    assert runner.codes.count(1) > rollbacks, runner.codes  # the launcher's rollback exit

    # NEW stays: the retained offer that named BAD is refused, not retried.
    await eventually(lambda: on(NEW), timeout=10, what=f"still {NEW}")
    assert os.readlink(prefix / "current") == f"releases/{NEW}"
    assert runner.output().count(f"agent {BAD} installed and switched to") == 1
