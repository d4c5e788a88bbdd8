"""`outpost-hub devices` (the fleet registry as a table or JSON; one device shown,
labelled or renamed) and `outpost-hub device revoke`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

from hub.cli import remote, tables
from hub.cli.datafolder import load_config, open_store
from hub.paths import HubPaths


def list_devices(args: argparse.Namespace) -> int:
    """Print the fleet registry as a table or JSON: read from the data folder's database
    (the hub need not run), or from a hub's API with --hub."""
    if args.data is not None and not (args.hub or os.environ.get("OUTPOST_HUB")):
        from hub.api.models import DeviceOut  # here: only the local listing needs them
        from outpost import schema

        with open_store(HubPaths(args.data)) as store:
            devices = store.devices_sync()
        return _print_fleet([schema.dump(DeviceOut.of(d)) for d in devices], args.json)

    async def listed(client: remote.Client) -> int:
        return _print_fleet(await client.pages("/api/v1/devices", limit="500"), args.json)

    return remote.run(args, listed)


def _print_fleet(rows: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_fleet(rows, now=time.time()))
    return 0


def show_device(args: argparse.Namespace) -> int:
    """Print one device (by id or name): identity, state, load, models, store, and its
    latest events."""

    async def show(client: remote.Client) -> int:
        ref = quote(args.device, safe="")
        device = await client.get(f"/api/v1/devices/{ref}")
        events = await client.get(f"/api/v1/devices/{ref}/events", limit=str(args.events))
        if args.json:
            remote.show_json({**device, "events": events["items"]})
            return 0
        print(render_device(device, events["items"], now=time.time()))
        return 0

    return remote.run(args, show)


def label_device(args: argparse.Namespace) -> int:
    """Set labels (KEY=VALUE) or remove them (KEY-) on a device."""
    changes: dict[str, str | None] = {}
    for item in args.labels:
        change: str | None
        if item.endswith("-") and "=" not in item:
            key, change = item[:-1], None
        elif "=" in item:
            key, change = item.split("=", 1)
        else:
            raise ValueError(f"label {item!r}: write KEY=VALUE to set it, or KEY- to remove it")
        # Kept as a map, only the last of two would count, silently (as enroll-token's
        # --label and --selector refuse it too).
        if key in changes and changes[key] != change:
            raise ValueError(
                f"label {key!r} is given twice ({_change(key, changes[key])} and "
                f"{_change(key, change)}); give each key once"
            )
        changes[key] = change
    return _patch(args, {"labels": changes})


def _change(key: str, value: str | None) -> str:
    """A label change as it was written: KEY=VALUE, or KEY- for a removal."""
    return f"{key}-" if value is None else f"{key}={value}"


def rename_device(args: argparse.Namespace) -> int:
    """Give a device a new name."""
    return _patch(args, {"name": args.name})


def _patch(args: argparse.Namespace, body: dict[str, Any]) -> int:
    async def patch(client: remote.Client) -> int:
        ref = quote(args.device, safe="")
        device = await client.call("PATCH", f"/api/v1/devices/{ref}", body=body)
        if args.json:
            remote.show_json(device)
        else:
            print(f"{device['name']} ({device['id']}): labels {tables.labels(device['labels'])}")
        return 0

    return remote.run(args, patch)


def revoke_device(args: argparse.Namespace) -> int:
    """Revoke a device and say what its broker was told."""
    from hub.fleet.revocation import Revoker, UnknownDeviceError  # here: the PKI's weight

    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    with open_store(paths, config) as store:
        try:
            by = f"cli:{getpass.getuser()}"  # the registry records who revoked it
            device_id = store.resolve_device_sync(args.device_id) or args.device_id  # a name?
            done = asyncio.run(Revoker(paths, config, store).revoke(device_id, by=by))
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
    """Format devices (as the API returns them) as a table: name, id, profile, state
    (online, offline or revoked), last heartbeat, load, models, labels."""
    header = (
        "NAME",
        "DEVICE",
        "PROFILE",
        "STATE",
        "LAST HEARTBEAT",
        "CPU %",
        "RSS MiB",
        "MODELS",
        "LABELS",
    )
    rows = []
    for d in devices:
        beat = f"{now - d['last_heartbeat']:.1f} s ago" if d["last_heartbeat"] else "never"
        if d.get("bundle_at") and d["bundle_at"] >= (d["last_heartbeat"] or 0):
            beat = f"{tables.ago(d['bundle_at'], now)} (via bundle)"
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
        name = d.get("name") or d["id"]
        rows.append((name, d["id"], d["profile"], state, beat, cpu, rss, models, labels))
    return tables.table(header, rows)


def render_device(d: dict[str, Any], events: list[dict[str, Any]], *, now: float) -> str:
    """One device as `devices show` prints it."""
    state = "revoked" if d.get("revoked") else "online" if d["online"] else "offline"
    load = d.get("load") or {}
    store = d.get("store") or {}
    lines = [
        f"{d['name']} ({d['id']})",
        f"  state       {state}"
        + (f" since {tables.when(d['revoked_at'])} by {d['revoked_by']}" if d["revoked"] else "")
        + f"; last heartbeat {tables.ago(d['last_heartbeat'], now)}",
        f"  profile     {d['profile']}; agent {d.get('agent_version') or '-'}; "
        f"runtime {d.get('runtime') or '-'}",
        f"  labels      {tables.labels(d['labels'])}",
        f"  enrolled    {tables.when(d['enrolled_at'])}; certificate until "
        f"{tables.when(d['certificate']['not_after'])}",
    ]
    if load:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(load.items()))
        stale = "" if d["online"] else f" (as of {tables.ago(d['last_heartbeat'], now)})"
        lines.append(f"  load        {shown}{stale}")
    if store:
        lines.append(f"  store       {json.dumps(store, sort_keys=True)[:300]}")
    for m in d.get("models") or []:
        failed = f" FAILED: {m.get('error', '')}" if m.get("state") != "ready" else ""
        lines.append(f"  model       {m['name']} {m['version']}{failed}")
    if d.get("bundle_at"):
        lines.append(f"  via bundle  last seen via bundle, at {tables.when(d['bundle_at'])}")
    lines.append(f"  tasks       {d['task_slots']} at once")
    if events:
        lines.append("events (newest first):")
        lines.append(
            tables.table(
                ("  WHEN", "WHAT", "DETAIL"),
                [("  " + tables.when(e["at"]), e["kind"], e["detail"]) for e in events],
            )
        )
    return "\n".join(lines)
