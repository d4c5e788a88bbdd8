"""`outpost-agent bundle export|import`: courier bundles through the running agent's
local API (edge/courierapi.py), so the daemon's store is never opened by a second
process. The parts are written and read here (outpost/courier/parts.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from edge.identity import DevicePaths, Identity
from outpost.courier import content, parts, sealing
from outpost.courier.sealing import BundleError

TIMEOUT_S = 3600.0  # a million records take a while on a small device


class BundleCliError(RuntimeError):
    """A mistake or refusal the user can act on; the message says which."""


class BundleRefusedError(BundleCliError):
    """The agent refused a bundle (the others may still go in)."""


def parse_size(text: str) -> int:
    try:
        return parts.parse_size(text)
    except ValueError as exc:
        raise BundleCliError(str(exc)) from exc


def export(data: Path, to: Path, max_size: int, max_records: int) -> int:
    paths = _paths(data)
    device_id = Identity.load(paths).device_id
    route = f"/v1/bundles/export?max_records={max_records}"
    reply, body = asyncio.run(_call(paths, route, b""))
    counts = json.loads(reply.get("X-Outpost-Records", "{}"))
    more = reply.get("X-Outpost-More") == "true"
    stem = f"outpost-{device_id}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        written = parts.write_parts(body, to, stem, max_size)
    except ValueError as exc:
        raise BundleCliError(str(exc)) from exc
    except OSError as exc:
        raise BundleCliError(f"cannot write to {to}: {exc.strerror or exc}") from exc
    total = sum(counts.values())
    by_stream = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v)
    count = f"{len(written)} part{'s' if len(written) > 1 else ''}"
    print(f"exported {total:,} records ({by_stream or 'none'}) for the hub")
    print(f"in {count} ({len(body):,} bytes), signed and encrypted:")
    for path in written:
        print(f"  {path}")
    print("they stay on this device until the hub's ack bundle is imported here")
    if more:
        print(
            f"more records wait beyond these {max_records:,} (--max-records): the next export, "
            "after this bundle's ack is imported here, carries them"
        )
    return 0


def import_(data: Path, sources: list[Path]) -> int:
    """Apply the hub bundles among `sources` that are for this device. The hub's
    `--ack-out` folder holds every device's ack, so the others' are skipped (each
    device imports the same folder); a refused bundle is reported and the rest still
    go in, and the command fails at the end."""
    paths = _paths(data)
    device_id = Identity.load(paths).device_id
    try:
        bundles = parts.assemble(sources)
    except BundleError as exc:
        raise BundleCliError(f"refused: {exc}") from exc
    mine, others = _addressed_to(device_id, bundles)
    for name, why in others:
        print(f"{name}: skipped: {why}")
    if not mine:
        raise BundleCliError(
            f"no bundle here is for this device ({device_id}): "
            + "; ".join(f"{name} {why}" for name, why in others)
        )
    refused = []
    for name, sealed in mine:
        try:
            _, body = asyncio.run(_call(paths, "/v1/bundles/import", sealed))
        except BundleRefusedError as exc:
            print(f"{name}: {exc}")
            refused.append((name, str(exc)))
            continue
        _report(name, json.loads(body))
    if len(refused) == 1 and len(mine) == 1:
        raise BundleCliError(refused[0][1])
    if refused:
        raise BundleCliError(
            f"{len(refused)} of {len(mine)} bundles for this device were refused: "
            + "; ".join(f"{name}: {why}" for name, why in refused)
        )
    return 0


def _addressed_to(
    device_id: str, bundles: list[tuple[str, bytes]]
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """The bundles for `device_id`, and why each other one is not (read from the clear
    header: the agent checks the signed one)."""
    mine, others = [], []
    for name, sealed in bundles:
        try:
            to = sealing.addressee(sealed)
        except BundleError:
            mine.append((name, sealed))  # the agent refuses it, saying why
            continue
        if to == device_id:
            mine.append((name, sealed))
        elif to == content.HUB:
            others.append((name, "is a device's bundle for the hub: import it at the hub"))
        else:
            others.append((name, f"is for {to}, not for this device: import it on {to}"))
    return mine, others


def _report(name: str, applied: dict[str, Any]) -> None:
    marks = ", ".join(f"{k} {v:,}" for k, v in applied["acknowledged"].items())
    print(f"{name}: the hub holds up to: {marks}; policy {applied['policy']}")
    if applied.get("older"):
        print(
            "  made before a hub bundle applied here already: its marks and tasks are "
            "taken; its releases, gap marks and certificate are left alone"
        )
    if applied["forgotten_through"]:
        print("  records the hub holds are deleted here")
    if applied["tasks"]:
        days = applied["lease_s"] / 86400
        print(f"  {applied['tasks']} tasks leased for {days:.3g} days: their results go in the")
        print("  next export")
    if applied.get("tasks_overdue"):
        print(
            f"  {applied['tasks_overdue']} tasks not taken: their lease or deadline ran out "
            "while the bundle was carried (the hub gives them to another device)"
        )
    for model in applied["models"]:
        print(f"  model {model} carried: the agent checks, installs and activates it")
    for problem in applied.get("models_refused", []):
        print(f"  refused: {problem}")
    if applied["certificate"] != "none":
        print(f"  certificate {applied['certificate']}")
    if applied["note"]:
        print(f"  the hub says: {applied['note']}")


def _paths(data: Path) -> DevicePaths:
    paths = DevicePaths(data)
    if not paths.identity.exists():
        raise BundleCliError(f"{data} is not an enrolled agent folder: check --data")
    return paths


async def _call(paths: DevicePaths, route: str, body: bytes) -> tuple[Any, bytes]:
    connector = aiohttp.UnixConnector(path=str(paths.socket))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    try:
        async with session, session.post(f"http://agent{route}", data=body) as reply:
            data = await reply.read()
            if reply.status != 200:
                raise BundleRefusedError(f"refused: {_message(data, reply.status)}")
            return reply.headers, data
    except (OSError, aiohttp.ClientConnectionError) as exc:
        raise BundleCliError(
            f"the agent is not running on {paths.root} (no local API at {paths.socket}): "
            "start it (systemctl start outpost-agent); bundles go through the running agent "
            "so that its store is never opened twice"
        ) from exc


def _message(data: bytes, status: int) -> str:
    try:
        return str(json.loads(data)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"
