"""The demo's devices: a link per site, each agent enrolled, given the shipped models and
started, and the programs on each device that use its local API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge.cli import MAX_SOCKET_PATH
from scripts.demo_parts.plan import AGENTS, BIN, HEARTBEAT_S, REPO, SENSOR_MODEL, SHIPPED_MODELS
from scripts.demo_parts.processes import run, step
from scripts.demo_site import Background, Producer, SensorProgram, SiteLink


@dataclass
class Device:
    name: str
    device_id: str
    site: str
    producer: Producer
    sensor: SensorProgram
    agent: subprocess.Popen[bytes]
    log: Path
    tasks: str = "-"
    tasks_done: int = 0
    policy: str = "-"


Agent = tuple[str, str, dict[str, str]]  # name, profile, labels


def socket_too_long(data: Path, names: list[str]) -> str | None:
    """Why the agents' local API sockets could not live under `data`, if they could not
    (an agent refuses a Unix socket path past the kernel's limit, with its staging name)."""
    longest = max(names, key=len)
    socket = data.absolute() / "agents" / longest / "agent.sock"
    size = len(os.fsencode(socket)) + len(".new")
    if size <= MAX_SOCKET_PATH:
        return None
    return (
        f"{data} is too long a path: the agents serve on Unix sockets in it ({socket} and its "
        f"staging name take {size} bytes, at most {MAX_SOCKET_PATH}); give --data a shorter "
        "folder, such as /tmp/outpost-demo"
    )


def start_site_links(
    mqtt_port: int, background: Background, agents: list[Agent] = AGENTS
) -> dict[str, SiteLink]:
    """A link per site to the broker, each one the demo can cut."""
    links = {}
    for site in sorted({labels["site"] for _, _, labels in agents}):
        links[site] = SiteLink(mqtt_port)
        background.run(links[site].start())
    return links


def start_agents(
    data: Path,
    hub_dir: Path,
    logs: Path,
    links: dict[str, SiteLink],
    children: list[subprocess.Popen[bytes]],
    agents: list[Agent] = AGENTS,
) -> list[Device]:
    """Enroll each agent, install the shipped models and start it behind its site's link."""
    devices: list[Device] = []
    for name, profile, labels in agents:
        agent_dir = data / "agents" / name
        label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        token = run(
            str(BIN / "outpost-hub"),
            "enroll-token",
            "--data",
            str(hub_dir),
            "--ttl",
            "10m",
            *label_args,
        ).strip()
        agent_dir.mkdir(parents=True)
        token_file = agent_dir / "bootstrap.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        out = run(
            str(BIN / "outpost-agent"),
            "enroll",
            "--token-file",
            str(token_file),
            "--data",
            str(agent_dir),
            "--profile",
            profile,
            "--name",
            name,
        )
        token_file.unlink()
        step(f"{name} ({profile}): {out.strip()}; its site link: {labels['site']}")
        installed = run(
            str(BIN / "outpost-agent"),
            "models",
            "install",
            "--data",
            str(agent_dir),
            *SHIPPED_MODELS,
        )
        step(f"{name}: " + "; ".join(installed.splitlines()[:-1]))
        link = links[labels["site"]]
        log = logs / f"{name}.log"
        agent = subprocess.Popen(
            [
                str(BIN / "outpost-agent"),
                "run",
                "--data",
                str(agent_dir),
                "--heartbeat-interval",
                str(HEARTBEAT_S),
                "--broker",
                f"mqtts://127.0.0.1:{link.port}",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the demo, which stops this
            cwd=REPO,
        )
        children.append(agent)
        producer = Producer(agent_dir / "agent.sock", name, logs / f"{name}-producer.log")
        sensor = SensorProgram(agent_dir / "agent.sock", SENSOR_MODEL[name], len(devices))
        device_id = out.split("(", 1)[1].split(")", 1)[0]  # "enrolled as NAME (ID); ..."
        devices.append(Device(name, device_id, labels["site"], producer, sensor, agent, log))
    return devices


def start_programs(devices: list[Device], background: Background) -> None:
    """Once each agent's socket is there: its device's producer and sensor program."""
    for device in devices:
        wait_socket(device)
        background.spawn(device.producer.run())
        background.spawn(device.sensor.run())
    step("a program on each device posts 5 results a second to its agent's local API")
    step(
        "a sensor program on each device asks its agent's model about a reading twice "
        "a second; flagged answers become results (POST /v1/infer/{model})"
    )


def wait_socket(device: Device) -> None:
    """Wait for the agent's local API socket; if the agent exits first, say why (its log
    does)."""
    socket = device.producer.socket
    deadline = time.monotonic() + 20
    while not socket.exists():
        if device.agent.poll() is not None:
            sys.exit(
                f"demo: {device.name}'s agent exited (code {device.agent.returncode}); "
                f"its log ({device.log}):\n{device.log.read_text(errors='replace')[-2000:]}"
            )
        if time.monotonic() > deadline:
            sys.exit(f"demo: {socket} never appeared within 20 s; see {device.log}")
        time.sleep(0.1)  # polling for the agent's socket
