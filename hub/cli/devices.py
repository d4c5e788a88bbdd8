"""`outpost-hub devices` (the fleet registry as a table or JSON) and `outpost-hub device
revoke`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from typing import Any

from hub.api.models import DeviceOut
from hub.cli.datafolder import load_config, open_store
from hub.fleet.revocation import Revoker, UnknownDeviceError
from hub.paths import HubPaths
from outpost import schema


def list_devices(args: argparse.Namespace) -> int:
    """Print the fleet registry as a table or JSON."""
    with open_store(HubPaths(args.data)) as store:
        devices = store.devices_sync()
    rows = [schema.dump(DeviceOut.of(d)) for d in devices]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(render_fleet(rows, now=time.time()))
    return 0


def revoke_device(args: argparse.Namespace) -> int:
    """Revoke a device and say what its broker was told."""
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    with open_store(paths, config) as store:
        try:
            by = f"cli:{getpass.getuser()}"  # the registry records who revoked it
            done = asyncio.run(Revoker(paths, config, store).revoke(args.device_id, by=by))
        except UnknownDeviceError as exc:
            raise ValueError(str(exc)) from exc
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(done.revoked_at))
    if done.already_revoked:
        print(f"{done.device_id} was already revoked (at {when}); its CRL entries are rewritten")
    else:
        print(f"revoked {done.device_id}: {done.certificates} certificate(s) in the CRL")
    if not config.managed_broker and not done.broker_reloaded:
        print(
            "external broker: it was not told to re-read the CRL (broker_crl_path and "
            "broker_reload_command unset, or they failed: see the log); reload it by hand"
        )
    elif done.broker_reloaded:
        connection = (
            "its connection, if any, was closed"
            if done.disconnected
            else "its connection could not be closed (see the log)"
        )
        print(f"the broker reloaded the CRL; {connection}")
        if done.proof_failure is not None:
            print(
                f"outpost-hub: error: revocation NOT proven: {done.proof_failure}", file=sys.stderr
            )
            return 1
        print("proven: the broker refuses its certificates as revoked")
    else:
        print("the hub is not running: its broker reads the CRL when it starts")
    return 0


def render_fleet(devices: list[dict[str, Any]], *, now: float) -> str:
    """Format devices (as the API returns them) as a table: device, profile, state
    (online, offline or revoked), last heartbeat, load, models, labels."""
    rows = [
        ("DEVICE", "PROFILE", "STATE", "LAST HEARTBEAT", "CPU %", "RSS MiB", "MODELS", "LABELS")
    ]
    for d in devices:
        beat = f"{now - d['last_heartbeat']:.1f} s ago" if d["last_heartbeat"] else "never"
        load = d["load"]
        cpu = f"{load['cpu_percent']:.0f}" if "cpu_percent" in load else "-"
        rss = f"{load['rss_bytes'] / 2**20:.0f}" if "rss_bytes" in load else "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items())) or "-"
        models = (
            ",".join(
                f"{m['name']}@{m['version']}" + ("" if m["state"] == "ready" else "(FAILED)")
                for m in d.get("models", [])
            )
            or "-"
        )
        # A revoked device is gone for good: not "offline", which says it may come back.
        state = "revoked" if d.get("revoked") else "online" if d["online"] else "offline"
        rows.append((d["id"], d["profile"], state, beat, cpu, rss, models, labels))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
