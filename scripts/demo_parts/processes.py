"""Outpost's commands as the demo runs them, and the processes it starts and stops."""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hub.paths import HubPaths
from scripts.demo_parts.plan import BIN, REPO
from scripts.ports import free_port


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def run(*args: str) -> str:
    """Run an Outpost command to completion and return its standard output."""
    done = subprocess.run(args, check=False, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"demo: {' '.join(args[:2])} failed:\n{done.stderr.strip()}")
    return done.stdout


def wait_healthy(url: str, ca: Path, hub: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            sys.exit(f"demo: the hub exited; its log ({log}):\n{log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/api/v1/health", context=context, timeout=2),  # noqa: S310 - our own https URL
        ):
            return
        time.sleep(0.1)  # polling the hub's health route until it answers
    sys.exit(f"demo: the hub did not answer within 20 s; see {log}")


def start_hub(
    hub_dir: Path, logs: Path, children: list[subprocess.Popen[bytes]], extra: str = ""
) -> tuple[int, int]:
    """One hub with its managed Mosquitto (the default), `extra` lines in its hub.toml;
    its MQTT and web ports."""
    step(f"initialising the hub in {hub_dir}")
    run(str(BIN / "outpost-hub"), "init", "--data", str(hub_dir))
    mqtt_port, web_port = free_port(), free_port()
    config = f"[hub]\nmqtt_port = {mqtt_port}\nweb_port = {web_port}\n" + extra
    HubPaths(hub_dir).config.write_text(config)
    step(
        f"starting the hub: broker mqtts://127.0.0.1:{mqtt_port}, "
        f"web https://127.0.0.1:{web_port} (log: {logs / 'hub.log'})"
    )
    hub_log = logs / "hub.log"
    hub = subprocess.Popen(
        [str(BIN / "outpost-hub"), "run", "--data", str(hub_dir)],
        stdout=hub_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches only the demo, which stops this
        cwd=REPO,
    )
    children.append(hub)
    wait_healthy(f"https://127.0.0.1:{web_port}", HubPaths(hub_dir).ca_cert, hub, hub_log)
    return mqtt_port, web_port


def refuse_second_hub(hub_dir: Path) -> None:
    """One daemon per data folder: a second one is refused before it touches anything."""
    second = subprocess.run(
        [str(BIN / "outpost-hub"), "run", "--data", str(hub_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    step(
        f"a second hub on the same data folder is refused (exit {second.returncode}): "
        + (second.stderr.strip().splitlines() or ["(no message)"])[-1]
    )


def stop_all(children: list[subprocess.Popen[bytes]]) -> int:
    """Stop the agents first (each says goodbye to the hub), the hub last (it stops its
    broker)."""
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return len(children)
