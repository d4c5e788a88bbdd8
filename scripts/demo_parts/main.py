"""The local demo: a hub, its managed Mosquitto and three agents with different profiles.

Everything lives in ./demo-data (made afresh each run). Each site reaches the broker
through a link the demo controls. Every device has the two shipped int8 models installed;
a sensor program on it asks its agent's model about each reading over the local API
(the agent records the flagged ones as results), and another program posts results.
After a while the north site's link is cut: its agents go offline and keep everything in
their stores; when the link returns they drain it, and the hub ends up with every result
exactly once. The fleet table refreshes until Ctrl-C (or --duration), then every process
the demo started is stopped, and the demo checks that every result a producer was
confirmed is held by the hub exactly once (exit 1 if not; 130 if stopped before it could
say, 2 on a usage error).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from scripts import demo_replicas
from scripts.demo_parts.agents import (
    Device,
    socket_too_long,
    start_agents,
    start_programs,
    start_site_links,
)
from scripts.demo_parts.agentupdate import NAME as UPDATER_NAME
from scripts.demo_parts.agentupdate import AgentUpdate
from scripts.demo_parts.bus import Consumer, sink_settings, start_nats
from scripts.demo_parts.courier import Courier
from scripts.demo_parts.explain import DemoExplain
from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.operations import create_token, start_operations
from scripts.demo_parts.plan import (
    AGENTS,
    BIN,
    COURIER_AGENT,
    COURIER_EVERY_S,
    CUT_AT_S,
    CUT_FOR_S,
    REPO,
)
from scripts.demo_parts.processes import (
    refuse_second_hub,
    run,
    start_hub,
    step,
    stop_all,
    wait_healthy,
)
from scripts.demo_parts.shadow import DemoShadow
from scripts.demo_parts.verdict import verdict
from scripts.demo_parts.view import show_fleet
from scripts.demo_site import Background, SiteLink

# The folder `./scripts/demo` was run from (it changes to the checkout first): a relative
# --data names a folder there, as the user meant.
CALLER_DIR = "OUTPOST_CALLER_DIR"
# What `./scripts/demo` asks before it sets up: with this set, the arguments are checked
# (usage errors exit 2), the setup.sh option they need is printed, and nothing runs.
SETUP_QUERY = "OUTPOST_SETUP_QUERY"
# A closed terminal (SIGHUP), `kill` (SIGTERM) and Ctrl-\ (SIGQUIT) stop the demo as
# Ctrl-C does: its children run in sessions of their own, so nothing else stops them.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=0,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO / "demo-data",
        help="data folder: new, empty, or one an earlier demo made (wiped and made afresh)",
    )
    parser.add_argument(
        "--cut-at",
        type=float,
        help=f"seconds into the fleet view when the north link is cut (default {CUT_AT_S:g})",
    )
    parser.add_argument(
        "--cut-for",
        type=float,
        help=f"seconds the north link stays cut (default {CUT_FOR_S:g}; longer until the fleet "
        "view has shown it twice)",
    )
    parser.add_argument(
        "--sinks",
        action="store_true",
        help="also stream the fleet's events to a throwaway NATS JetStream server, and show "
        "a consumer's count next to the hub's",
    )
    parser.add_argument(
        "--courier",
        action="store_true",
        help="add a fourth device at a site with no link at all (mine-shaft, site deep), "
        f"whose data the demo carries to the hub by bundle files every {COURIER_EVERY_S:.0f} s",
    )
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="at the end, run a candidate surface-defect 1.1.0 in shadow beside the live "
        "version on the camera gate, print the comparison and let the hub promote or stop it",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="at the end, have the hub explain the camera gate's newest flagged image from "
        "the input that travelled with it, and write the heat map over it as a PNG",
    )
    parser.add_argument(
        "--agent-update",
        action="store_true",
        help="add a device that runs the agent side by side under the launcher, and at the "
        "end roll it out a newer release of this checkout through the hub",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="run the hub as this many replicas (2 or more) on a throwaway PostgreSQL and "
        f"one Mosquitto, and kill the leader {demo_replicas.KILL_AT_S:.0f} s in (left "
        "out: one hub)",
    )
    return parser


def arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, checked: a mistake exits 2 naming the option, before anything runs."""
    args = parser.parse_args()
    if not (math.isfinite(args.duration) and args.duration >= 0):
        parser.error(
            f"argument --duration: {args.duration:g}: give 0 (run until Ctrl-C) or more seconds"
        )
    cut_asked = args.cut_at is not None or args.cut_for is not None
    args.cut_at = CUT_AT_S if args.cut_at is None else args.cut_at
    args.cut_for = CUT_FOR_S if args.cut_for is None else args.cut_for
    if not (math.isfinite(args.cut_for) and args.cut_for > 0):
        parser.error(f"argument --cut-for: {args.cut_for:g}: give more than 0 seconds")
    if not (math.isfinite(args.cut_at) and args.cut_at >= 0):
        parser.error(f"argument --cut-at: {args.cut_at:g}: give 0 or more seconds")
    # A run shorter than the default timeline simply has no outage; one asked for must fit.
    if cut_asked and args.duration and args.cut_at >= args.duration:
        parser.error(
            f"argument --cut-at: {args.cut_at:g} s is not within --duration {args.duration:g} s: "
            "the link would never be cut"
        )
    args.data = Path(os.environ.get(CALLER_DIR) or os.getcwd()) / args.data
    names = [name for name, _, _ in [*AGENTS, COURIER_AGENT]] + [UPDATER_NAME]
    if too_long := socket_too_long(args.data, names):
        parser.error(f"argument --data: {too_long}")
    if args.replicas is not None and args.replicas < 2:
        parser.error(f"--replicas: give 2 or more, not {args.replicas} (leave it out for one hub)")
    args.replicas = args.replicas or 0  # 0: one hub
    if args.sinks and args.replicas:
        parser.error("--sinks runs with one hub: leave out --replicas")
    if args.courier and args.replicas:
        parser.error("--courier runs with one hub: leave out --replicas")
    if args.shadow and args.replicas:
        parser.error("--shadow runs with one hub: leave out --replicas")
    if args.explain and args.replicas:
        parser.error("--explain runs with one hub: leave out --replicas")
    if args.agent_update and args.replicas:
        parser.error("--agent-update runs with one hub: leave out --replicas")
    return args


# Written into every data folder the demo makes: only such a folder is wiped by a later run.
MARKER = ".outpost-demo"


class RefusedFolder(Exception):
    """The --data folder cannot be the demo's: the message says why."""


def fresh_data_folder(data: Path) -> None:
    """Wipe a data folder an earlier demo made and make it afresh; refuse to touch any
    other folder that holds something (a mistyped --data must not delete a user's files)."""
    try:
        if data.exists():
            made_by_demo = (data / MARKER).exists() or all(  # or by a demo before the marker
                (data / part).is_dir() for part in ("hub", "agents", "logs")
            )
            if not data.is_dir() or (any(data.iterdir()) and not made_by_demo):
                raise RefusedFolder(
                    f"{data} is not a folder an earlier demo made (it has no {MARKER}): "
                    "refusing to delete it; give --data a new or empty folder"
                )
            shutil.rmtree(data)
        data.mkdir(parents=True)
        (data / MARKER).write_text("made by scripts/demo.py; deleted by its next run\n")
    except OSError as exc:  # a file on the way, no permission, a read-only disk
        raise RefusedFolder(
            f"{data}: cannot make the demo's folder there ({exc.strerror or exc}); "
            "give --data a new or empty folder"
        ) from exc


def restore_links(links: dict[str, SiteLink], bg: Background) -> None:
    """Bring every cut link back (the courier's site has none)."""
    for site, link in links.items():
        if not link.up and site != COURIER_AGENT[2]["site"]:
            bg.call(link.restore)


def close(
    api: HubApi,
    devices: list[Device],
    links: dict[str, SiteLink],
    bg: Background,
    courier: Courier | None = None,
    acts: Sequence[str] = (),
) -> bool:
    """Stop the producers, bring every link back (the courier's site has none: its last
    trip carries the rest), let the stores drain, and say whether every confirmed
    result arrived exactly once; the verdict line carries what `acts` say after it."""
    for device in devices:
        device.producer.stopped = True
    restore_links(links, bg)
    step("the producers stop; checking what the hub holds against what they were confirmed")
    try:
        ok, line = verdict(api, devices, courier)
    except OSError as exc:  # the hub stopped (killed from outside): no verdict, no traceback
        reason = getattr(exc, "reason", exc)
        step(f"no verdict: the hub's API did not answer ({reason})")
        return False
    step("; ".join([line, *acts]))
    return ok


def main() -> int:
    usage = parser()
    args = arguments(usage)
    if os.environ.get(SETUP_QUERY):
        print("--postgres" if args.replicas else "--nats" if args.sinks else "")
        return 0
    data: Path = args.data
    try:
        fresh_data_folder(data)
    except RefusedFolder as exc:
        usage.error(f"argument --data: {exc}")
    logs = data / "logs"
    logs.mkdir(parents=True)
    hub_dir = data / "hub"
    children: list[subprocess.Popen[bytes]] = []
    replicated: demo_replicas.ReplicaHub | None = None
    api: HubApi | None = None
    devices: list[Device] = []
    links: dict[str, SiteLink] = {}
    background: Background | None = None
    consumer: Consumer | None = None
    courier: Courier | None = None
    updater: AgentUpdate | None = None
    agents = [*AGENTS, COURIER_AGENT] if args.courier else AGENTS
    ok = True
    judged = False  # whether the verdict was reached: stopped before it, the demo exits 130

    def stop(signum: int = 0, frame: FrameType | None = None) -> None:
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # as `nohup` leaves SIGHUP
            signal.signal(signum, stop)
    try:
        if args.agent_update:
            updater = AgentUpdate(data, logs)
            updater.build()
        if args.replicas:
            replicated = demo_replicas.start(
                data, logs, args.replicas, children, run, step, BIN, wait_healthy
            )
            hub_dir, mqtt_port = replicated.hub_dir, replicated.broker_port
            web_port = replicated.survivor.web_port
        else:
            extra = ""
            if args.sinks:
                bus_url = start_nats(data, logs, children)
                extra = sink_settings(bus_url)
                consumer = Consumer(bus_url)
            mqtt_port, web_port = start_hub(hub_dir, logs, children, extra)
        refuse_second_hub(hub_dir)
        background = Background()
        if consumer is not None:
            background.spawn(consumer.run())
        links = start_site_links(mqtt_port, background, agents)
        if args.courier:
            background.call(links[COURIER_AGENT[2]["site"]].cut)  # and never restored
        devices = start_agents(data, hub_dir, logs, links, children, agents)
        if args.courier:
            name = COURIER_AGENT[0]
            courier = Courier(data, hub_dir, data / "agents" / name, name)
            step(f"{name} is at a site with no link at all: a courier carries its bundles")
        if updater is not None:
            updater.start(hub_dir, mqtt_port)
        start_programs(devices, background)
        api, feeder, rollout = start_operations(data, hub_dir, web_port, background)
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
            consumer,
            courier,
        )
        acts_ok = True
        acts: list[str] = []  # what the opt-in acts add to the verdict line
        if args.shadow or args.explain or updater is not None:
            restore_links(links, background)  # the acts need every device reachable
        if args.shadow:
            shadowed, lines = DemoShadow(
                api, create_token(hub_dir, "admin", "1h", "demo-shadow"), background
            ).run()
            for line in lines:
                step(line)
            acts_ok &= shadowed
        if args.explain:
            explained, lines = DemoExplain(
                api,
                create_token(hub_dir, "admin", "1h", "demo-explain"),
                create_token(hub_dir, "operator", "1h", "demo-explain"),
                background,
                data,
            ).run()
            for line in lines:
                step(line)
            acts_ok &= explained
        if updater is not None:
            outcome = updater.roll_out(api, create_token(hub_dir, "admin", "1h", "demo"))
            step(outcome.line)
            acts_ok &= outcome.ok
            acts.append(outcome.verdict)
        ok = close(api, devices, links, background, courier, acts) and acts_ok
        judged = True
    except KeyboardInterrupt:
        print()
        if api is not None and devices and background is not None:
            try:
                ok = close(api, devices, links, background, courier)
                judged = True
            except KeyboardInterrupt:
                step("the verdict was skipped (Ctrl-C again)")
        else:
            step("stopped before the fleet ran: no verdict")
    finally:
        # Stopping is bounded (each process gets 10 s, then SIGKILL): another Ctrl-C here
        # would leave processes running, so it is ignored until everything has stopped.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if updater is not None:
            updater.stop()
        stopped = stop_all(children)
        step(f"stopped {stopped} processes (agents, then the hub and its broker)")
        if replicated is not None:
            replicated.stop()
            step("stopped the throwaway PostgreSQL")
    if not judged:
        return 130
    return 0 if ok else 1
