"""The hub and its Mosquitto run with an open-file limit fit for a fleet: started under
systemd's default soft limit of 1,024, the hub raises it to the hard limit before its
broker starts (the broker inherits it) and caps the broker's connections within it;
when the hard limit is low too, it says so and caps the broker below it."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hub.broker.limits import RESERVED_FILES
from hub.broker.managed import pid_file
from hub.paths import HubPaths
from tests.support import REPO, eventually


def _soft_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


def _max_connections(paths: HubPaths) -> int:
    for line in (paths.broker_dir / "mosquitto.conf").read_text().splitlines():
        if line.startswith("max_connections "):
            return int(line.split()[1])
    raise AssertionError("mosquitto.conf sets no max_connections")


async def _run_hub_under(paths: HubPaths, tmp_path: Path, soft: int, hard: int) -> tuple[int, str]:
    """Start `outpost-hub run` under the given limits; return its broker's pid and log."""
    log = tmp_path / "hub.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with log.open("wb") as out:
        hub = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "run", "--data", str(paths.root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=limit,
        )
    try:

        async def broker_up() -> bool:
            assert hub.poll() is None, log.read_text()
            return "hub running" in log.read_text()

        await eventually(broker_up, timeout=30, what="the hub to start")
        broker = int(pid_file(paths).read_text())
        assert _soft_limit(hub.pid)[0] == _soft_limit(broker)[0]
        return broker, log.read_text()
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0


async def test_the_hub_raises_a_1024_soft_limit_to_the_hard_one_for_its_broker(
    hub_paths: HubPaths, tmp_path: Path
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 4096:
        pytest.fail(f"this test needs a hard open-file limit above 4096 (it is {hard})")
    _, log = await _run_hub_under(hub_paths, tmp_path, 1024, hard)
    assert _max_connections(hub_paths) == hard - RESERVED_FILES
    assert "open-file limit raised from 1024" in log
    assert "lets the broker take only" not in log


async def test_a_low_hard_limit_is_reported_and_the_broker_capped_within_it(
    hub_paths: HubPaths, tmp_path: Path
) -> None:
    _, log = await _run_hub_under(hub_paths, tmp_path, 1024, 1024)
    assert _max_connections(hub_paths) == 1024 - RESERVED_FILES
    assert "lets the broker take only 768 devices" in log
    assert "LimitNOFILE=" in log
