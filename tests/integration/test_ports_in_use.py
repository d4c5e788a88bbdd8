"""A port already taken by another program is a one-line error naming the port and the
setting or flag that moves it: exit 2, no traceback, nothing left running; the same
command on a free port starts."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hub.paths import HubPaths
from tests.support import REPO, free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def _run_hub(paths: HubPaths, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", "run", "--data", str(paths.root), *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def _mosquittos_of(paths: HubPaths) -> str:
    found = subprocess.run(
        ["pgrep", "-af", str(paths.broker_dir)], capture_output=True, text=True, check=False
    )
    return found.stdout


@pytest.mark.parametrize(
    ("flag", "setting", "what"),
    [("--web-port", "web_port", "port"), ("--mqtt-port", "mqtt_port", "the broker's port")],
)
def test_a_port_in_use_is_named_with_the_setting_that_moves_it(
    hub_paths: HubPaths, taken_port: int, flag: str, setting: str, what: str
) -> None:
    done = _run_hub(hub_paths, flag, str(taken_port))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"outpost-hub: error: {what} {taken_port} on 127.0.0.1 is in use (another program "
        f"listens there): set {setting} in hub.toml or {flag}"
    )
    assert _mosquittos_of(hub_paths) == ""  # the broker did not outlive the refusal


def test_the_same_hub_starts_on_a_free_port(hub_paths: HubPaths) -> None:
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "run",
            "--data",
            str(hub_paths.root),
            "--web-port",
            str(free_port()),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert hub.stderr is not None
        for line in hub.stderr:
            if "hub running" in line:
                break
        else:
            raise AssertionError(f"the hub exited with {hub.wait()}")
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(30)
