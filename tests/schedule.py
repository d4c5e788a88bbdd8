"""Start the longest tests first, one share of them on each xdist worker.

A whole run lasts as long as its busiest worker. With `--dist worksteal`, xdist hands each
worker one contiguous share of the collection, in order, and a worker that runs out takes
tests from the end of another's share. A test of two or three minutes that happens to sit
late in a share starts when the others are nearly done, and the run waits minutes for it
with a core idle. So the known long tests (their times from a run, in `durations.json`)
are dealt out, longest first, to the worker with the least work so far, and put at the
front of that worker's share (the long tests of a module that share a module-scoped
fixture, together); everything else keeps its order, so a module's tests stay together
and its fixtures are built once.

Refresh the times after a run with `--junitxml=FILE`: `python -m tests.schedule FILE`.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

DURATIONS = Path(__file__).with_name("durations.json")
# Shorter tests are dealt fine by worksteal; these are the ones a run waits for.
LONG = 5.0


class _Item(Protocol):
    @property
    def nodeid(self) -> str: ...


Item = TypeVar("Item", bound=_Item)


def known_durations() -> dict[str, float]:
    try:
        durations = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in durations.items()}


def share_sizes(count: int, workers: int) -> list[int]:
    """How worksteal first splits `count` tests among `workers`: each in turn takes its
    even part of what is left."""
    sizes = []
    left = count
    for remaining in range(workers, 0, -1):
        sizes.append(left // remaining)
        left -= sizes[-1]
    return sizes


def long_first(
    items: list[Item],
    workers: int,
    durations: dict[str, float],
    unit: Callable[[Item], str] = lambda item: item.nodeid,
) -> list[Item]:
    """The same items, the long ones dealt to the front of each worker's share. Long
    items of the same `unit` (a module whose tests share a module-scoped fixture) go to
    the same worker, so that fixture is built once."""
    if workers < 2:
        return items  # one process takes as long in any order
    units: dict[str, list[Item]] = {}
    for item in items:
        if durations.get(item.nodeid, 0.0) >= LONG:
            units.setdefault(unit(item), []).append(item)
    seconds = {key: sum(durations[i.nodeid] for i in group) for key, group in units.items()}
    # Longest first to the least loaded: within 4/3 of the best split.
    heads: list[list[Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for key in sorted(units, key=lambda key: -seconds[key]):
        least = loads.index(min(loads))
        heads[least] += sorted(units[key], key=lambda item: -durations[item.nodeid])
        loads[least] += seconds[key]
    chosen = {id(item) for group in units.values() for item in group}
    rest = iter([item for item in items if id(item) not in chosen])
    ordered: list[Item] = []
    for head, size in zip(heads, share_sizes(len(items), workers), strict=True):
        ordered += head
        ordered += [item for _, item in zip(range(size - len(head)), rest, strict=False)]
    ordered += list(rest)  # only when a head outgrew its share
    return ordered


def refresh(junit: Path) -> None:
    """Write the times of the tests that took `LONG` seconds or more in a junit report."""
    times: dict[str, float] = {}
    # pytest's own report of a run on this machine, not input from outside
    for case in ET.parse(junit).iter("testcase"):  # noqa: S314
        module = (case.get("classname") or "").replace(".", "/") + ".py"
        seconds = float(case.get("time") or 0)
        if seconds >= LONG:
            times[f"{module}::{case.get('name')}"] = round(seconds, 1)
    ranked = dict(sorted(times.items(), key=lambda kv: -kv[1]))
    DURATIONS.write_text(json.dumps(ranked, indent=1) + "\n")
    print(f"{len(ranked)} tests of {LONG:g} s or more written to {DURATIONS}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.schedule JUNIT_XML")
    refresh(Path(sys.argv[1]))
