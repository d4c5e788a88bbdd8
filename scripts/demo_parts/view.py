"""The fleet view the demo refreshes every second: the hub's table of devices, then what
the hub and each device count; meanwhile it cuts and restores the north site's link,
starts the roll-out and (with replicas) kills the leader, on the demo's timeline."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from edge.config import AgentConfig
from hub.cli import render_fleet
from scripts import demo_replicas
from scripts.demo_parts.agents import Device
from scripts.demo_parts.bus import Consumer
from scripts.demo_parts.courier import Courier
from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.plan import COURIER_AGENT, ROLLOUT_AT_S
from scripts.demo_parts.processes import step
from scripts.demo_parts.rollout import DemoRollout
from scripts.demo_site import Background, SiteLink, TaskFeeder

_AGENT = AgentConfig()
COURIER_SITE = COURIER_AGENT[2]["site"]
RECONNECT = (
    f"Its agents lost their connections with the link and have been retrying since: the "
    f"first retry after a random 0-{_AGENT.reconnect_spread_s:g} s (reconnect_spread_s, "
    "drawn per device so a site or a fleet does not return all at once), each later one "
    f"random up to that, or 1.5^n s once larger, never over {_AGENT.reconnect_max_delay:g} s "
    "(reconnect_max_delay). So they are back within a retry, then drain what they kept."
)


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
    consumer: Consumer | None = None,
    courier: Courier | None = None,
) -> None:
    tty = sys.stdout.isatty()
    started = time.monotonic()
    cut = links.get("north")
    back_at: float | None = None  # when the north link came back
    # Frames drawn while the link was cut. The link comes back once its time is up and the
    # viewer has seen the cut at least twice (inferences counting up while it lasts): on a
    # slow machine one frame takes seconds to draw, and a 5 s cut could show only once.
    frames_cut = 0
    north = {d.name for d in devices if d.site == "north"}
    while not duration or time.monotonic() - started < duration:
        elapsed = time.monotonic() - started
        if cut and cut.up and outage[0] <= elapsed < outage[1]:
            background.call(cut.cut)
            step(f"cutting the north site's link for {outage[1] - outage[0]:.0f} s")
        elif cut and not cut.up and elapsed >= outage[1] and frames_cut >= 2:
            background.call(cut.restore)
            back_at = time.monotonic()
            step(f"the north site's link is back. {RECONNECT}")
        if rollout.id is None and elapsed >= ROLLOUT_AT_S:
            step(rollout.start())
        if courier is not None and courier.due(elapsed):
            step(courier.trip(elapsed))
        fleet = api.devices()
        if back_at is not None:
            for d in fleet:
                if d["name"] in north and d["online"] and d["last_seen"] > time.time() - 1:
                    north.discard(d["name"])
                    step(
                        f"{d['name']} is back online {time.monotonic() - back_at:.1f} s after "
                        "its link"
                    )
        table = render_fleet(fleet, now=time.time())
        accepted, gaps, rejected = api.message_counts()
        alive = sum(c.poll() is None for c in children)
        if tty:
            print("\x1b[H\x1b[2J", end="")
        print(
            f"Outpost fleet at {time.strftime('%H:%M:%S')} "
            f"({alive} of {len(children)} processes up; from GET {api.url}/api/v1/devices)"
        )
        print(table)
        if cut and not cut.up:
            frames_cut += 1
        print(
            f"hub /metrics: {accepted} device messages accepted, {rejected} rejected"
            + (f", {gaps} record batches refused as a gap ({GAP})" if gaps else "")
        )
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
        if consumer is not None:
            print(consumer.line(api.sink("bus")))
        if courier is not None:
            print(courier.line())
        print()
        time.sleep(1)  # the demo's refresh period


# Why a batch is refused as a gap, which the demo's replicas show (a device's batches may
# reach different replicas, and one can be stored before the batch before it).
GAP = (
    "it came ahead of a batch not yet stored, as when two replicas each get one of a "
    "device's batches; the agent resends from the hub's mark, nothing is lost"
)
# Under the store-and-forward table: what its counts are, and why they need not add up.
STORE_NOTES = (
    "RECORDS CONFIRMED: every record the agent confirmed to its device's programs: the "
    "producer's results, the flagged answers and the finished tasks' results (the closing "
    "verdict checks the producer's, number by number)\n"
    "a record on its way counts both WAITING ON DEVICE and HELD BY HUB until the hub's "
    "acknowledgement reaches the agent (while a link is cut, until it is back)"
)


def store_and_forward(
    api: HubApi, devices: list[Device], links: dict[str, SiteLink], background: Background
) -> str:
    rows = [
        (
            "AGENT",
            "SITE LINK",
            "RECORDS CONFIRMED",
            "WAITING ON DEVICE",
            "HELD BY HUB",
            "ON THE LINK (PER RECORD, VS PLAIN MSGPACK; BATCH BUDGET)",
        )
    ]
    for d in devices:
        try:
            status = background.run(d.producer.status(), timeout=5)
            waiting = str(status["store"]["streams"]["results"]["records"])
            t = status["tasks"]
            d.tasks = f"{t['done']}/{t['running']}/{t['queued']}"
            d.tasks_done = t["done"]
            d.policy = f"v{status['policy_version']}" if status["policy_version"] else "none"
            link = link_bytes(status["sync"])
        except Exception:  # the agent may be restarting; the table goes on
            waiting = link = "?"
        rows.append(
            (
                d.name,
                "none (courier)" if d.site == COURIER_SITE else "up" if links[d.site].up else "CUT",
                str(d.producer.confirmed + d.sensor.flagged + d.tasks_done),
                waiting,
                api.held(d.device_id),
                link,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "store and forward:\n" + "\n".join(lines) + "\n" + STORE_NOTES


def link_bytes(sync: dict[str, Any]) -> str:
    """What the agent's uploads cost on the link: its batch encoding on this connection,
    bytes per record, the share of what the same batches would take plain, and how large
    its next batch may be (edge/batchsize.py)."""
    if not sync["records_sent"]:
        return "nothing sent yet"
    encoding = sync["compression"] or "plain"
    per_record = sync["bytes_sent"] / sync["records_sent"]
    share = sync["bytes_sent"] / sync["plain_bytes"]
    budget = sync["batch_bytes"] // 1024  # the next batch's: grows while acks are quick
    return f"{encoding}: {per_record:.0f} B ({share:.2f}x), batches up to {budget} KiB"


def local_inference(devices: list[Device]) -> str:
    rows = [
        (
            "AGENT",
            "MODEL",
            "INFERENCES",
            "FLAGGED (RECORDED)",
            "ERRORS",
            "LAST ANSWER",
            "ANSWER P50",
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
                "-" if s.wait_p50_ms is None else f"{s.wait_p50_ms:.2f} ms",
                d.tasks,
                d.policy,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return (
        "local inference (works with the link cut too) and hub tasks (done/running/queued):\n"
        + "\n".join(lines)
        + "\nANSWER P50: the sensor program's own wait for an answer over the local API (Unix "
        "socket, msgpack; median of its last 200), recorded answers included"
        + "\nPOLICY: the version of the hub-signed policy the agent runs (a layer's change makes "
        "a new one; the agent checks its signature and keeps the last good one offline)"
    )
