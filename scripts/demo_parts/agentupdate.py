"""The demo's agent update (`--agent-update`): a device that runs this checkout's agent
from a side-by-side install under the launcher, as scripts/install-agent.sh sets it up,
is rolled out a newer release of the same checkout through the hub, and restarts into
it: what it runs, the roll-out and the downtime are printed."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import selfupdate
from outpost import __version__, agentrelease
from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.plan import BIN, REPO
from scripts.demo_parts.processes import run, step

NAME = "edge-updater"
LABELS = {"site": "lab", "group": "updaters"}
NEW = f"{__version__}.1"  # sorts after the running version (edge/selfupdate.version_key)
UPDATE_WITHIN_S = 300.0
ENDED = ("completed", "halted", "stopped", "superseded")  # states a roll-out stays in


@dataclass(frozen=True)
class Outcome:
    """How the update went: whether it completed, the line that tells it, and the clause
    the demo's verdict line carries."""

    ok: bool
    line: str
    verdict: str


class AgentUpdate:
    def __init__(self, data: Path, logs: Path) -> None:
        self._folder = data / "agent-update"
        self._logs = logs
        self._agent_dir = data / "agents" / NAME
        self._prefix = self._folder / "opt-outpost"
        self._builds: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._hub_dir = Path()
        self._mqtt_port = 0
        self._launcher: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self.device_id = ""

    def build(self) -> None:
        """Start building both releases (the outpost wheel and every wheel it needs:
        seconds each) while the hub and the fleet come up."""
        self._folder.mkdir(parents=True)
        for version in (__version__, NEW):
            with (self._logs / f"build-agent-release-{version}.log").open("wb") as log:
                build = subprocess.Popen(
                    [sys.executable, "-m", "scripts.build_agent_release", "--out",
                     str(self._folder / version), "--version", version,
                     "--platform", os.uname().machine],
                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                    start_new_session=True,  # its pip children stop with it (stop())
                )  # fmt: skip
            self._builds.append((version, build))
        step(f"agent update: building releases {__version__} and {NEW} of this checkout "
             "while the fleet comes up")  # fmt: skip

    def start(self, hub_dir: Path, mqtt_port: int) -> None:
        """Once both releases are built: enroll the device, install the running version
        side by side and start it under the launcher."""
        for version, build in self._builds:
            if build.wait() != 0:
                log = self._logs / f"build-agent-release-{version}.log"
                sys.exit(f"demo: building the agent release {version} failed:\n"
                         f"{log.read_text(errors='replace').strip()[-2000:]}")  # fmt: skip
        step(f"agent update: built releases {__version__} and {NEW} of this checkout "
             "(the outpost wheel and every wheel it needs)")  # fmt: skip
        self._hub_dir, self._mqtt_port = hub_dir, mqtt_port
        labels = [a for k, v in LABELS.items() for a in ("--label", f"{k}={v}")]
        token = run(str(BIN / "outpost-hub"), "enroll-token", "--data", str(hub_dir),
                    "--ttl", "10m", *labels)  # fmt: skip
        self._agent_dir.mkdir(parents=True)
        token_file = self._agent_dir / "bootstrap.token"
        token_file.write_text(token.strip())
        token_file.chmod(0o600)
        out = run(str(BIN / "outpost-agent"), "enroll", "--token-file", str(token_file),
                  "--data", str(self._agent_dir), "--profile", "generic",
                  "--name", NAME)  # fmt: skip
        token_file.unlink()
        self.device_id = out.split("(", 1)[1].split(")", 1)[0]
        running = self._folder / __version__
        selfupdate.install(
            running, agentrelease.read_folder(running), prefix=self._prefix, data=self._agent_dir
        )
        selfupdate.switch(self._prefix, __version__)
        threading.Thread(target=self._systemd, name="demo-launcher", daemon=True).start()
        step(f"{NAME}: {out.strip()}; runs {__version__} from "
             f"{self._prefix}/releases/{__version__} under the launcher")  # fmt: skip

    def _systemd(self) -> None:
        """What systemd's Restart=on-failure does: start the launcher again."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with (self._logs / f"{NAME}.log").open("ab") as out:
            while not self._stopping:
                self._launcher = subprocess.Popen(
                    [sys.executable, str(REPO / "systemd" / "outpost-launch"),
                     "--prefix", str(self._prefix), "--data", str(self._agent_dir), "--",
                     "--broker", f"mqtts://127.0.0.1:{self._mqtt_port}"],
                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )  # fmt: skip
                if self._launcher.wait() == 0:
                    return

    def stop(self) -> None:
        self._stopping = True
        for _, build in self._builds:
            if build.poll() is None:  # stopped while it built: the script and its pip
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(build.pid, signal.SIGKILL)
                build.wait()
        if self._launcher is not None and self._launcher.poll() is None:
            self._launcher.terminate()
            try:
                self._launcher.wait(30)
            except subprocess.TimeoutExpired:
                self._launcher.kill()

    def roll_out(self, api: HubApi, admin: str) -> Outcome:
        """Upload the newer release, roll it out to the device, follow it."""
        if not self._wait(lambda: self._agent_version(api) == __version__, 120):
            said = f"{NAME} never came online with {__version__}"
            return Outcome(False, f"agent update: {said}", f"the agent update did NOT run: {said}")
        step(f"agent update: {NAME} runs agent {__version__} (the hub's device list says)")
        said = run(str(BIN / "outpost-hub"), "agent-releases", "upload", "--data",
                   str(self._hub_dir), str(self._folder / NEW))  # fmt: skip
        step(f"agent update: {said.strip()}")
        started = time.monotonic()
        rollout = api.post(
            "/api/v1/rollouts",
            {"agent": NEW, "selector": {"group": LABELS["group"]}, "canary_share": 1.0},
            admin,
        )
        step(f"agent update: roll-out #{rollout['id']} of the agent {NEW} to "
             f"group={LABELS['group']} started")  # fmt: skip
        gap = _Downtime(self._agent_dir / "agent.sock", __version__, NEW)
        gap.start()
        state = ""
        seen: dict[str, str] = {}
        current = os.readlink(self._prefix / "current")
        while time.monotonic() - started < UPDATE_WITHIN_S:
            body = json.loads(api.get(f"/api/v1/rollouts/{rollout['id']}"))
            state = body["state"]
            self._progress(body, seen, time.monotonic() - started)
            if (now_current := os.readlink(self._prefix / "current")) != current:
                current = now_current
                step(f"agent update: {NAME} installed {NEW} beside {__version__}, its "
                     f"selfcheck passed; current -> {current}, restarting "
                     f"({time.monotonic() - started:.1f} s in)")  # fmt: skip
            if state in ENDED:
                break
            time.sleep(0.5)
        took = time.monotonic() - started
        gap.join(30)
        now = self._agent_version(api)
        if state != "completed" or now != NEW:
            said = f"roll-out {state or 'timed out'}; {NAME} runs {now}"
            return Outcome(
                False, f"agent update: {said}", f"the agent update did NOT complete: {said}"
            )
        line = (f"agent update: roll-out completed in {took:.1f} s; {NAME} runs {NEW} "
                f"(was {__version__}), its local API down for {gap.downtime_ms:.0f} ms; "
                f"current -> {os.readlink(self._prefix / 'current')}")  # fmt: skip
        clause = (f"{NAME} updated from agent {__version__} to {NEW} in {took:.1f} s, "
                  f"down {gap.downtime_ms:.0f} ms")  # fmt: skip
        return Outcome(True, line, clause)

    def _progress(self, body: dict[str, Any], seen: dict[str, str], at: float) -> None:
        """Print the roll-out's state and each device's as they change (an ending after
        the devices' changes that led to it)."""
        lines = []
        if seen.get("") != body["state"]:
            seen[""] = body["state"]
            lines.append(f"agent update: roll-out #{body['id']} {body['state']} ({at:.1f} s in)")
        for device in body["devices"]:
            if seen.get(device["device"]) != device["state"]:
                seen[device["device"]] = device["state"]
                who = NAME if device["device"] == self.device_id else device["device"]
                lines.append(f"agent update: {who} ({device['stage']}) "
                             f"{device['state']} ({at:.1f} s in)")  # fmt: skip
        if body["state"] in ENDED and len(lines) > 1:
            lines.append(lines.pop(0))
        for line in lines:
            step(line)

    def _agent_version(self, api: HubApi) -> str | None:
        for d in api.devices():
            if d["id"] == self.device_id and d.get("online"):
                return str(d.get("agent_version"))
        return None

    @staticmethod
    def _wait(check: Callable[[], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.5)
        return False


class _Downtime(threading.Thread):
    """Polls the device's local API: from the last answer naming `old` to the first
    naming `new`."""

    def __init__(self, path: Path, old: str, new: str) -> None:
        super().__init__(name="demo-downtime", daemon=True)
        self._path, self._old, self._new = path, old, new
        self.downtime_ms = float("nan")

    def run(self) -> None:
        last_old = time.monotonic()
        deadline = last_old + UPDATE_WITHIN_S
        while time.monotonic() < deadline:
            found = _version(self._path)
            now = time.monotonic()
            if found == self._old:
                last_old = now
            elif found == self._new:
                self.downtime_ms = (now - last_old) * 1000
                return
            time.sleep(0.02)


class _UnixHttp(http.client.HTTPConnection):
    """HTTP over the agent's local API socket (standard library only)."""

    def __init__(self, path: Path) -> None:
        super().__init__("agent", timeout=1)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(1)
        self.sock.connect(str(self._path))


def _version(path: Path) -> str | None:
    """The agent version its local API names, or None while it does not answer."""
    conn = _UnixHttp(path)
    try:
        conn.request("GET", "/v1/status")
        return str(json.loads(conn.getresponse().read())["version"])
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return None
    finally:
        conn.close()
