"""The local demo: a hub, its managed Mosquitto and three agents with different profiles.

Everything lives in ./demo-data (made afresh each run). Each site reaches the broker
through a link the demo controls. Every device has the two shipped int8 models installed;
a sensor program on it asks its agent's model about each reading over the local API
(the agent records the flagged ones as results), and another program posts results.
After a while the north site's link is cut: its agents go offline and keep everything in
their stores; when the link returns they drain it, and the hub ends up with every result
exactly once. The fleet table refreshes until Ctrl-C (or --duration), then every process
the demo started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hub.cli import render_fleet  # noqa: E402 - after the path tweak, for a plain checkout
from hub.paths import HubPaths  # noqa: E402
from scripts import demo_replicas  # noqa: E402
from scripts.demo_site import (  # noqa: E402
    Background,
    Producer,
    SensorProgram,
    SiteLink,
    TaskFeeder,
)

BIN = Path(sys.executable).parent
AGENTS = [
    ("pump-station", "raspberry-pi-4", {"site": "north", "group": "pumps"}),
    ("camera-gate", "jetson-orin-nano", {"site": "north", "group": "cameras"}),
    ("line-3-gateway", "x86-gateway", {"site": "south", "group": "lines"}),
]
# The model each device's sensor program uses.
SENSOR_MODEL = {
    "pump-station": "vibration-anomaly",
    "camera-gate": "surface-defect",
    "line-3-gateway": "vibration-anomaly",
}
POLICY_LAYERS: dict[str, dict[str, Any]] = {
    "fleet": {
        "scope": "fleet",
        "document": {"metrics_interval": 10, "inference": {"confidence_below": 0.7}},
    },
    "cameras": {
        "scope": "group",
        "selector": {"group": "cameras"},
        "document": {"masking": {"hash": ["source"]}},
    },
}
SHIPPED_MODELS = sorted(str(p.parent) for p in (REPO / "models").glob("*/*/model.json"))
HEARTBEAT_S = 2.0
ROLLOUT_AT_S = 4.0  # seconds into the fleet view when vibration-anomaly 1.1.0 rolls out
CUT_AT_S, CUT_FOR_S = 12.0, 15.0  # when the north site's link goes down, and for how long


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=0,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--data", type=Path, default=REPO / "demo-data", help="data folder (wiped and made afresh)"
    )
    parser.add_argument(
        "--cut-at",
        type=float,
        default=CUT_AT_S,
        help="seconds into the fleet view when the north link is cut",
    )
    parser.add_argument(
        "--cut-for", type=float, default=CUT_FOR_S, help="seconds the north link stays cut"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="run the hub as this many replicas (2 or more) on a throwaway PostgreSQL and "
        f"one Mosquitto, and kill the leader {demo_replicas.KILL_AT_S:.0f} s in",
    )
    args = parser.parse_args()
    if args.replicas == 1 or args.replicas < 0:
        parser.error("--replicas: give 2 or more (0, the default, runs one hub)")

    data: Path = args.data
    if data.exists():
        shutil.rmtree(data)
    logs = data / "logs"
    logs.mkdir(parents=True)
    hub_dir = data / "hub"
    children: list[subprocess.Popen[bytes]] = []
    replicated: demo_replicas.ReplicaHub | None = None

    def stop(signum: int = 0, frame: FrameType | None = None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        if args.replicas:
            replicated = demo_replicas.start(
                data, logs, args.replicas, children, run, step, BIN, wait_healthy
            )
            hub_dir, mqtt_port = replicated.hub_dir, replicated.broker_port
            web_port = replicated.survivor.web_port
        else:
            mqtt_port, web_port = start_hub(hub_dir, logs, children)
        # One daemon per data folder: a second one is refused before it touches anything.
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

        background = Background()
        links = {}
        for site in sorted({labels["site"] for _, _, labels in AGENTS}):
            links[site] = SiteLink(mqtt_port)
            background.run(links[site].start())
        devices: list[Device] = []
        for name, profile, labels in AGENTS:
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
                str(REPO / "firmware-configs" / f"{profile}.toml"),
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
            children.append(
                subprocess.Popen(
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
                    stdout=(logs / f"{name}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
            producer = Producer(agent_dir / "agent.sock", name)
            sensor = SensorProgram(agent_dir / "agent.sock", SENSOR_MODEL[name], len(devices))
            device_id = out.split()[2].rstrip(";")
            devices.append(Device(name, device_id, labels["site"], producer, sensor))
        for device in devices:
            wait_socket(device.producer)
            background.spawn(device.producer.run())
            background.spawn(device.sensor.run())
        step("a program on each device posts 5 results a second to its agent's local API")
        step(
            "a sensor program on each device asks its agent's model about a reading twice "
            "a second; flagged answers become results (POST /v1/infer/{model})"
        )
        token = run(
            str(BIN / "outpost-hub"),
            "token",
            "create",
            "--data",
            str(hub_dir),
            "--role",
            "viewer",
            "--ttl",
            "12h",
            "--subject",
            "demo",
        ).strip()
        token_file = data / "viewer.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        api = HubApi(f"https://127.0.0.1:{web_port}", HubPaths(hub_dir).ca_cert, token)
        operator = run(
            str(BIN / "outpost-hub"),
            "token",
            "create",
            "--data",
            str(hub_dir),
            "--role",
            "operator",
            "--ttl",
            "12h",
            "--subject",
            "demo-operator",
        ).strip()
        admin = run(
            str(BIN / "outpost-hub"),
            *("token", "create", "--data", str(hub_dir), "--role", "admin"),
            *("--ttl", "1h", "--subject", "demo-admin"),
        ).strip()
        for name, layer in POLICY_LAYERS.items():
            api.put(f"/api/v1/policy/layers/{name}", layer, admin)
        step(
            "policy: a fleet layer (inference confidence threshold 0.7, metrics every 10 s) "
            "and a layer for the cameras group (masks the 'source' field: hashed before "
            "upload); each agent verifies the signed policy and reports the version it runs"
        )
        rollout = DemoRollout(api, admin, background)
        feeder = TaskFeeder(api.url, HubPaths(hub_dir).ca_cert, operator)
        background.spawn(feeder.run())
        step(
            "an operator program submits 20 tasks every 2 s (POST /api/v1/tasks): 16 "
            "vibration windows for any device with the model, 4 images for the cameras"
        )
        step("a viewer token for the API is in demo-data/viewer.token; try:")
        print(
            f'    curl --cacert {HubPaths(hub_dir).ca_cert} -H "Authorization: Bearer '
            f'$(cat {token_file})" {api.url}/api/v1/devices'
        )
        step(
            f"the live dashboard: {api.url}/dashboard (trust {HubPaths(hub_dir).ca_cert} in "
            "the browser, or accept its warning for this local demo); sign in with this "
            f"viewer token (12 h):\n    {token}"
        )
        step("fleet (refreshing every second; Ctrl-C stops everything)")
        outage = (args.cut_at, args.cut_at + args.cut_for)
        show_fleet(
            api,
            args.duration,
            children,
            devices,
            links,
            background,
            outage,
            feeder,
            rollout,
            replicated,
        )
    except KeyboardInterrupt:
        print()
    finally:
        stopped = stop_all(children)
        step(f"stopped {stopped} processes (agents, then the hub and its broker)")
        if replicated is not None:
            replicated.stop()
            step("stopped the throwaway PostgreSQL")
    return 0


def start_hub(
    hub_dir: Path, logs: Path, children: list[subprocess.Popen[bytes]]
) -> tuple[int, int]:
    """One hub with its managed Mosquitto (the default); its MQTT and web ports."""
    step(f"initialising the hub in {hub_dir}")
    run(str(BIN / "outpost-hub"), "init", "--data", str(hub_dir))
    mqtt_port, web_port = free_port(), free_port()
    config = f"[hub]\nmqtt_port = {mqtt_port}\nweb_port = {web_port}\n"
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
        cwd=REPO,
    )
    children.append(hub)
    wait_healthy(f"https://127.0.0.1:{web_port}", HubPaths(hub_dir).ca_cert, hub, hub_log)
    return mqtt_port, web_port


class HubApi:
    """The demo reads the fleet the way an operator would: the hub's HTTPS API."""

    def __init__(self, url: str, ca: Path, token: str) -> None:
        self.url = url
        self.ca = ca
        self.context = ssl.create_default_context(cafile=str(ca))
        self._headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, url: str = "") -> bytes:
        """GET `path` from the hub (or from another replica's `url`)."""
        request = urllib.request.Request((url or self.url) + path, headers=self._headers)  # noqa: S310 - our own https URL
        with urllib.request.urlopen(request, context=self.context, timeout=5) as response:  # noqa: S310
            body: bytes = response.read()
            return body

    def put(self, path: str, body: dict[str, Any], token: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own https URL
            self.url + path,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=5):  # noqa: S310
            pass

    def post(self, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own https URL
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=5) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def devices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.get("/api/v1/devices"))["items"]
        return items

    def held(self, device_id: str) -> str:
        """Results the hub holds for a device ("-" if it cannot say)."""
        try:
            streams = json.loads(self.get(f"/api/v1/devices/{device_id}/streams"))
        except (OSError, ValueError):
            return "-"
        for item in streams.get("items", streams if isinstance(streams, list) else []):
            if item.get("stream") == "results":
                return str(item.get("records", "-"))
        return "0"

    def task_states(self) -> dict[str, int]:
        """Tasks by state, from the hub's /metrics."""
        states: dict[str, int] = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            if family.name == "outpost_hub_tasks":
                states = {s.labels["state"]: int(s.value) for s in family.samples}
        return states

    def message_counts(self) -> tuple[int, int]:
        accepted = rejected = 0
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            if family.name != "outpost_hub_messages":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    if sample.labels["outcome"] == "accepted":
                        accepted += int(sample.value)
                    else:
                        rejected += int(sample.value)
        return accepted, rejected


class DemoRollout:
    """An admin uploads vibration-anomaly 1.1.0 (the shipped network under a new version)
    and rolls it out to every device, one canary first."""

    def __init__(self, api: HubApi, admin: str, background: Background) -> None:
        self._api = api
        self._admin = admin
        self._background = background
        self.id: int | None = None

    def start(self) -> str:
        folder = REPO / "models" / "vibration-anomaly" / "1.0.0"
        manifest = json.loads((folder / "model.json").read_text())
        manifest["version"] = "1.1.0"
        uploaded = self._background.run(
            self._upload(
                (folder / "model.tflite").read_bytes(),
                manifest,
                (folder / "sample.json").read_bytes(),
            )
        )
        started = self._api.post(
            "/api/v1/rollouts",
            {"model": "vibration-anomaly", "version": "1.1.0", "canary_share": 0.3},
            self._admin,
        )
        self.id = int(started["id"])
        return (
            f"model vibration-anomaly 1.1.0 uploaded (POST /api/v1/models: the hub ran its "
            f"sample on {uploaded['checked_with']} and signed it); roll-out {self.id} to "
            "every device: one canary first, the rest once it runs the model"
        )

    async def _upload(self, model: bytes, manifest: dict[str, Any], sample: bytes) -> Any:
        form = aiohttp.FormData()
        form.add_field("model", model, filename="model.tflite")
        form.add_field("manifest", json.dumps(manifest), filename="model.json")
        form.add_field("sample", sample, filename="sample.json")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self._api.url + "/api/v1/models",
                data=form,
                headers={"Authorization": f"Bearer {self._admin}"},
                ssl=self._api.context,
            ) as response,
        ):
            response.raise_for_status()
            return await response.json()

    def progress(self, names: dict[str, str]) -> str:
        if self.id is None:
            return f"model roll-out: vibration-anomaly 1.1.0 starts {ROLLOUT_AT_S:.0f} s in"
        try:
            r = json.loads(self._api.get(f"/api/v1/rollouts/{self.id}"))
        except (OSError, ValueError):
            return "model roll-out: (hub not answering)"
        each = ", ".join(
            f"{names.get(d['device'], d['device'])} {d['stage']} {d['state']}" for d in r["devices"]
        )
        reason = f" ({r['reason']})" if r["reason"] else ""
        return (
            f"model roll-out {r['id']} of {r['model']} {r['version']} "
            f"(GET /api/v1/rollouts/{r['id']}): {r['state']}{reason}: {each}"
        )


@dataclass
class Device:
    name: str
    device_id: str
    site: str
    producer: Producer
    sensor: SensorProgram
    tasks: str = "-"
    tasks_done: int = 0
    policy: str = "-"


def wait_socket(producer: Producer) -> None:
    deadline = time.monotonic() + 20
    while not Path(producer._socket).exists():
        if time.monotonic() > deadline:
            sys.exit(f"demo: {producer._socket} never appeared; see demo-data/logs")
        time.sleep(0.1)  # polling for the agent's socket


def show_fleet(
    api: HubApi,
    duration: float,
    children: list[subprocess.Popen[bytes]],
    devices: list[Device],
    links: dict[str, SiteLink],
    background: Background,
    outage: tuple[float, float],
    feeder: TaskFeeder,
    rollout: DemoRollout,
    replicated: demo_replicas.ReplicaHub | None = None,
) -> None:
    tty = sys.stdout.isatty()
    started = time.monotonic()
    cut = links.get("north")
    while not duration or time.monotonic() - started < duration:
        elapsed = time.monotonic() - started
        if cut and cut.up and outage[0] <= elapsed < outage[1]:
            background.call(cut.cut)
            step(f"cutting the north site's link for {outage[1] - outage[0]:.0f} s")
        elif cut and not cut.up and elapsed >= outage[1]:
            background.call(cut.restore)
            step("the north site's link is back")
        if rollout.id is None and elapsed >= ROLLOUT_AT_S:
            step(rollout.start())
        table = render_fleet(api.devices(), now=time.time())
        accepted, rejected = api.message_counts()
        alive = sum(c.poll() is None for c in children)
        if tty:
            print("\x1b[H\x1b[2J", end="")
        print(
            f"Outpost fleet at {time.strftime('%H:%M:%S')} "
            f"({alive} of {len(children)} processes up; from GET {api.url}/api/v1/devices)"
        )
        print(table)
        print(f"hub /metrics: {accepted} device messages accepted, {rejected} rejected")
        states = api.task_states()
        print(
            f"tasks ({feeder.submitted} submitted): "
            + ", ".join(f"{n} {state}" for state, n in states.items() if n)
        )
        print(store_and_forward(api, devices, links, background))
        print(local_inference(devices))
        print(rollout.progress({d.device_id: d.name for d in devices}), flush=True)
        if replicated is not None:
            print(replicated.fail_over(elapsed, lambda url: api.get("/metrics", url), step))
        print()
        time.sleep(1)  # the demo's refresh period


def store_and_forward(
    api: HubApi, devices: list[Device], links: dict[str, SiteLink], background: Background
) -> str:
    rows = [("AGENT", "SITE LINK", "RESULTS CONFIRMED", "WAITING ON DEVICE", "HELD BY HUB")]
    for d in devices:
        try:
            status = background.run(d.producer.status(), timeout=5)
            waiting = str(status["store"]["streams"]["results"]["records"])
            t = status["tasks"]
            d.tasks = f"{t['done']}/{t['running']}/{t['queued']}"
            d.tasks_done = t["done"]
            d.policy = f"v{status['policy_version']}" if status["policy_version"] else "none"
        except Exception:  # the agent may be restarting; the table goes on
            waiting = "?"
        rows.append(
            (
                d.name,
                "up" if links[d.site].up else "CUT",
                str(d.producer.confirmed + d.sensor.flagged + d.tasks_done),
                waiting,
                api.held(d.device_id),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "store and forward:\n" + "\n".join(lines)


def local_inference(devices: list[Device]) -> str:
    rows = [
        (
            "AGENT",
            "MODEL",
            "INFERENCES",
            "FLAGGED (RECORDED)",
            "ERRORS",
            "LAST ANSWER",
            "TASKS",
            "POLICY",
        )
    ]
    for d in devices:
        s = d.sensor
        rows.append(
            (
                d.name,
                s.model,
                str(s.inferences),
                str(s.flagged),
                str(s.failed),
                s.last,
                d.tasks,
                d.policy,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return (
        "local inference (works with the link cut too) and hub tasks (done/running/queued):\n"
        + "\n".join(lines)
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


if __name__ == "__main__":
    sys.exit(main())
