"""Helpers shared by the integration tests: free ports, polling with a deadline, agents."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from hub.app import Hub
from hub.fleet import bootstrap
from hub.fleet.enrollment import load_token_key
from hub.store import Device
from outpost import tls
from scripts.ports import free_port as free_port  # re-exported: the tests import it from here

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "firmware-configs"

T = TypeVar("T")

# The models that ship with the project, as bundle folders.
SHIPPED_MODELS = [
    REPO / "models" / "vibration-anomaly" / "1.0.0",
    REPO / "models" / "surface-defect" / "1.0.0",
]


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = 5.0,
    every: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)  # a poll with a deadline (eventually)


class AgentProcess:
    """An `outpost-agent run` child process, killed at the end of the test."""

    def __init__(
        self,
        data: Path,
        *,
        heartbeat_interval: float = 0.5,
        log: Path,
        env: dict[str, str] | None = None,
        wrapper: str | None = None,
        log_level: str = "debug",
    ) -> None:
        """`env` is added to the environment; `wrapper` names a module that runs the
        agent's module (`python -m WRAPPER edge.cli ...`, e.g. tests.sandbox); `log_level`
        is debug for tests (their logs explain a failure), info (as deployed) for the
        benchmarks, whose figures a debug line per request would move."""
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                *([wrapper] if wrapper else []),
                "edge.cli",
                "run",
                "--data",
                str(data),
                "--heartbeat-interval",
                str(heartbeat_interval),
                "--log-level",
                log_level,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log_file.close()


async def mint_token(
    hub: Hub, *, ttl: float = 600, labels: dict[str, str] | None = None, now: float | None = None
) -> str:
    """Mint a bootstrap token and record it, as `outpost-hub enroll-token` does."""
    issued = time.time() if now is None else now
    token, claims = bootstrap.mint(
        load_token_key(hub.paths),
        hub_url=hub.config.hub_url,
        ca_fingerprint=tls.fingerprint(hub.paths.ca_cert.read_bytes()),
        ttl=ttl,
        labels=labels or {},
        now=issued,
    )
    await hub.parts.store.add_enroll_token(
        claims.jti, now=issued, expires_at=claims.expires_at, labels=labels or {}
    )
    return token


async def device_online(hub: Hub, device_id: str) -> bool:
    device = await hub.parts.store.device(device_id)
    return bool(device and device.online)


def enrolled_device(
    device_id: str,
    *,
    profile: str = "generic",
    labels: dict[str, str] | None = None,
    name: str = "",
) -> Device:
    """A device as enrollment registers it, with a made-up certificate window."""
    return Device(
        device_id=device_id,
        profile=profile,
        labels=labels or {},
        online=False,
        last_seen=None,
        last_heartbeat=None,
        heartbeat_interval=None,
        agent_version=None,
        capabilities={},
        load={},
        enrolled_at=time.time(),
        cert_serial=device_id.encode().hex(),  # unique, as serials are
        cert_not_before=1.0,
        cert_not_after=2.0,
        name=name,
    )


async def add_device(
    hub: Hub, device_id: str, *, profile: str = "generic", labels: dict[str, str] | None = None
) -> None:
    """Register a device straight in the store, with a made-up certificate window."""
    await hub.parts.store.add_device(enrolled_device(device_id, profile=profile, labels=labels))
