"""The demo's closing verdict: every result a producer was confirmed (its own log says
which) is held by the hub exactly once (the hub's API says what it holds), after the
producers stop and the stores drain."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from scripts.demo_parts.agents import Device
from scripts.demo_parts.courier import Courier
from scripts.demo_parts.hubapi import HubApi

DRAIN_DEADLINE_S = 30.0


def confirmed_numbers(log: Path) -> list[int]:
    """The record numbers a producer's log says its agent confirmed."""
    numbers: list[int] = []
    if log.exists():
        for line in log.read_text().splitlines():
            first, last = line.removeprefix("confirmed ").split("-")
            numbers.extend(range(int(first), int(last) + 1))
    return numbers


def held_numbers(api: HubApi, device: Device) -> list[int]:
    """The record numbers of this device's producer among the results the hub holds."""
    numbers: list[int] = []
    cursor = ""
    while True:
        page = json.loads(
            api.get(
                f"/api/v1/devices/{device.device_id}/records?stream=results&limit=500"
                + (f"&cursor={cursor}" if cursor else "")
            )
        )
        numbers.extend(
            r["body"]["n"]
            for r in page["items"]
            # The producer's records (its source may be masked by policy: the cameras'
            # layer hashes it), not the agent's flagged inferences or task results.
            if isinstance(r["body"], dict) and "vibration_rms" in r["body"] and "n" in r["body"]
        )
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return numbers


def verdict(api: HubApi, devices: list[Device], courier: Courier | None = None) -> tuple[bool, str]:
    """Wait for the stores to drain (up to a deadline), then compare: (all arrived once,
    the line that says so or what is wrong). The courier's site drains by its trips."""
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while True:
        confirmed = {d.name: confirmed_numbers(d.producer.log) for d in devices}
        held = {d.name: held_numbers(api, d) for d in devices}
        missing = {n: set(confirmed[n]) - set(held[n]) for n in confirmed}
        if not any(missing.values()) or time.monotonic() > deadline:
            break
        if courier is not None and missing[courier.name]:
            courier.final_trip()  # the site with no link drains by the stick only
        else:
            time.sleep(0.5)  # the agents are still draining their stores
    total = sum(len(c) for c in confirmed.values())
    doubled = {
        name: [n for n, k in collections.Counter(numbers).items() if k > 1]
        for name, numbers in held.items()
    }
    once = sum(len(set(confirmed[n]) & set(held[n])) for n in confirmed)
    carried = ""
    if courier is not None:
        name = courier.name
        carried = f" ({len(set(confirmed[name]) & set(held[name])):,} of them by courier bundle)"
    if not any(missing.values()) and not any(doubled.values()):
        return True, (
            f"every confirmed result arrived exactly once: {once:,} of {total:,}{carried} "
            "(the producers' results, checked by number)"
        )
    problems = [f"{len(m)} missing on {name}" for name, m in missing.items() if m] + [
        f"{len(d)} doubled on {name}" for name, d in doubled.items() if d
    ]
    return False, (
        "NOT every confirmed result arrived exactly once (the producers' results, checked "
        f"by number): {', '.join(problems)}"
    )
