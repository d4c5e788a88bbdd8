"""`outpost-hub bundle import|export`: courier bundles for sites with no link, on the
hub machine (`--data`), with the hub running or not."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hub.cli.datafolder import load_config, open_store
from hub.courier.desk import open_desk
from hub.fleet.labels import parse_selector
from hub.paths import HubPaths
from hub.store import HubStore
from outpost.courier import parts
from outpost.courier.sealing import BundleError


def import_bundles(args: argparse.Namespace) -> int:
    """Import device bundles; write each device's ack bundle to --ack-out (without it,
    no ack is made: nothing is leased to the device and no certificate renewed)."""
    paths = HubPaths(args.data)
    max_tasks = _task_limit(args.tasks)
    bundles = parts.assemble(args.paths)  # a bad part refuses the lot: nothing stored
    refused = 0
    config = load_config(args.data, args.config)
    with open_store(paths, config) as store:
        if args.ack_out is not None:
            # Before the first import: an import leases tasks into its ack and records
            # the bundle, so its import again is refused; an ack that could not then be
            # written left those tasks with nobody to carry them until the lease ran out.
            _writable_folder(args.ack_out, "--ack-out")
        desk = open_desk(paths, store, config)
        for name, sealed in bundles:
            try:
                outcome = asyncio.run(
                    desk.importer.import_bundle(
                        sealed,
                        lease_s=args.lease,
                        max_tasks=max_tasks,
                        answer=args.ack_out is not None,
                    )
                )
            except BundleError as exc:
                refused += 1
                print(f"{name}: refused: {exc}")
                continue
            except Exception as exc:  # whatever it is, one bundle must not stop the rest
                refused += 1
                print(f"{name}: not imported, it failed: {type(exc).__name__}: {exc}")
                continue
            print(f"{name}: imported: {outcome.summary()}")
            if outcome.ack_problem:
                refused += 1
                print(f"  {outcome.ack_problem}")
            elif args.ack_out is not None:
                for path in _write(args.ack_out, outcome.device_id, outcome.ack, args.max_size):
                    print(f"  ack for the device: {path}")
    return 1 if refused else 0


def export_bundles(args: argparse.Namespace) -> int:
    """Write a bundle for each device named or selected: marks and policy, and tasks
    leased to it. A device chosen by selector or by default that is online over MQTT
    now is leased nothing: its tasks reach it over MQTT, and a bundle it never sees
    would hold them for the lease (days). Named with --device, it is leased tasks."""
    paths = HubPaths(args.data)
    max_tasks = _task_limit(args.tasks)
    selector = parse_selector(args.selector, "--selector")
    config = load_config(args.data, args.config)
    with open_store(paths, config) as store:
        desk = open_desk(paths, store, config)
        chosen = asyncio.run(_chosen(store, args.device, selector))
        if not chosen.device_ids:
            raise ValueError("no device matches: check --device or --selector")
        _writable_folder(args.to, "--to")  # before any lease, as for --ack-out
        made = asyncio.run(
            desk.exporter.export(
                chosen.device_ids,
                lease_s=args.lease,
                max_tasks=max_tasks,
                lease_to=chosen.lease_to,
            )
        )
    failed = 0
    for exported in made:
        if not exported.sealed:
            failed += 1
            print(f"{exported.device_id}: not exported: {exported.reason}")
            continue
        leased = f" ({exported.tasks} tasks leased)" if exported.tasks else ""
        if exported.device_id not in chosen.lease_to:
            leased = (
                " (online over MQTT now: no tasks leased; name it with --device to lease it "
                "tasks by bundle)"
            )
        for path in _write(args.to, exported.device_id, exported.sealed, args.max_size):
            print(f"{exported.device_id}{leased}: {path}")
    return 1 if failed else 0


@dataclass(frozen=True)
class Chosen:
    device_ids: list[str]
    lease_to: frozenset[str]  # those whose bundles lease tasks


async def _chosen(store: HubStore, names: list[str], selector: dict[str, str]) -> Chosen:
    """The devices named, then those the selector (or, with neither, the default:
    every unrevoked device) picks; tasks are leased to those named and to the others
    that are offline."""
    named = []
    for name in names:
        found = await store.resolve_device(name)
        if found is None:
            raise ValueError(f"no device named {name!r}")
        named.append(found)
    picked, online = [], set()
    if selector or not names:
        for device in await store.devices():
            if device.revoked_at is None and all(
                device.labels.get(k) == v for k, v in selector.items()
            ):
                picked.append(device.device_id)
                if device.online:
                    online.add(device.device_id)
    device_ids = list(dict.fromkeys(named + picked))
    return Chosen(device_ids, frozenset(named) | frozenset(picked).difference(online))


def _task_limit(tasks: int) -> int:
    """--tasks, refused when negative: read as 0 it leased nothing, silently."""
    if tasks < 0:
        raise ValueError(f"--tasks {tasks}: give how many tasks to lease, 0 for none")
    return tasks


def _writable_folder(folder: Path, flag: str) -> None:
    """Make `folder` if need be and prove a file can be made in it, or say why not."""
    try:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag} {folder} is a file: give a folder to write bundles in")
        folder.mkdir(parents=True, exist_ok=True)
        # Permission bits do not tell (root ignores them; a read-only mount overrides
        # them): only a file made there does.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(
            f"{flag} {folder}: cannot write bundles there: {exc.strerror or exc}"
        ) from exc


def _write(folder: Path, device_id: str, sealed: bytes, max_size: int) -> list[Path]:
    stem = f"outpost-hub-for-{device_id}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        return parts.write_parts(sealed, folder, stem, max_size)
    except OSError as exc:
        raise ValueError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
