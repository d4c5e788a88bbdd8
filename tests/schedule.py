"""Start the longest tests first, one share of them on each xdist worker.

A whole run lasts as long as its busiest worker. With `--dist worksteal`, xdist hands each
worker one contiguous share of the collection, in order, and a worker that runs out takes
tests from the end of another's share. A test of two or three minutes that happens to sit
late in a share starts when the others are nearly done, and the run waits minutes for it
with a core idle. So the known long tests (their times from a run, in `durations.json`)
are dealt out, longest first, to the worker with the least work so far, and put at the
front of that worker's share (a module's tests that share a module-scoped fixture move
together); everything else keeps its order, so a module's tests stay together and its
fixtures are built once. Other `--dist` modes split differently: the order does them
no harm and no good.

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
    """The times in `durations.json`; none if it is missing or damaged (the run takes
    longer then, never fails for it)."""
    try:
        durations = json.loads(DURATIONS.read_text())
        return {str(k): float(v) for k, v in durations.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


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
    """The same items, the long ones dealt to the front of each worker's share. Items of
    the same `unit` (a module's tests that share a module-scoped fixture) move together,
    in their order, when one of them is long: the fixture is built once, by one worker."""
    if workers < 2:
        return items  # one process takes as long in any order
    units: dict[str, list[Item]] = {}
    for item in items:
        units.setdefault(unit(item), []).append(item)
    seconds = {
        key: sum(durations.get(item.nodeid, 0.0) for item in group)
        for key, group in units.items()
        if any(durations.get(item.nodeid, 0.0) >= LONG for item in group)
    }
    # Longest first to the least loaded: within 4/3 of the best split.
    heads: list[list[Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for key in sorted(seconds, key=lambda key: -seconds[key]):
        least = loads.index(min(loads))
        heads[least] += units[key]
        loads[least] += seconds[key]
    chosen = {id(item) for key in seconds for item in units[key]}
    rest = iter([item for item in items if id(item) not in chosen])
    ordered: list[Item] = []
    for head, size in zip(heads, share_sizes(len(items), workers), strict=True):
        ordered += head
        ordered += [item for _, item in zip(range(size - len(head)), rest, strict=False)]
    ordered += list(rest)  # only when a head outgrew its share
    return ordered


def refresh(junit: Path) -> None:
    """Take the times of a junit report's tests: those of `LONG` seconds or more are
    kept, those under it dropped; the tests it did not run keep their times."""
    times = known_durations()
    # pytest's own report of a run on this machine, not input from outside
    for case in ET.parse(junit).iter("testcase"):  # noqa: S314
        module = (case.get("classname") or "").replace(".", "/") + ".py"
        nodeid = f"{module}::{case.get('name')}"
        seconds = float(case.get("time") or 0)
        if seconds >= LONG:
            times[nodeid] = round(seconds, 1)
        else:
            times.pop(nodeid, None)
    ranked = dict(sorted(times.items(), key=lambda kv: -kv[1]))
    DURATIONS.write_text(json.dumps(ranked, indent=1) + "\n")
    print(f"{len(ranked)} tests of {LONG:g} s or more in {DURATIONS}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.schedule JUNIT_XML")
    try:
        refresh(Path(sys.argv[1]))
    except (OSError, ET.ParseError, ValueError) as exc:
        sys.exit(f"tests.schedule: cannot read {sys.argv[1]} as a junit report: {exc}")
