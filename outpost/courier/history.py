"""A device's history since the hub's last ack, summarised in its bundle: the period its
records cover, its load samples (one metric roll-up per interval, online or not: what
heartbeats would have said while no link carried them), their CPU load, and the agent's
restarts (its `agent.started` events). Made from the records the bundle carries, so
it covers exactly what the hub has not acknowledged; a few numbers, whatever the
backlog."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from outpost import rollup
from outpost.wire import Records

STARTED = "agent.started"  # the event each start of the agent records
_BODY = msgspec.msgpack.Decoder(dict[str, Any])


class History(msgspec.Struct, frozen=True):
    """What the device went through over the records of one bundle."""

    since: float  # the oldest record's time, epoch seconds
    until: float  # the newest record's
    samples: Annotated[int, Meta(ge=0)]  # load samples: metric roll-ups
    restarts: Annotated[int, Meta(ge=0)]  # agent starts recorded
    cpu_min: float | None = None  # percent, over the samples
    cpu_max: float | None = None
    cpu_mean: float | None = None

    def describe(self) -> str:
        hours = (self.until - self.since) / 3600
        when = (
            f"{_utc(self.since)} to {_utc(self.until)} ({_number(hours, 1)} h)"
            if hours >= 0.05
            else f"at {_utc(self.until)}"
        )
        load = (
            f", CPU {_number(self.cpu_min, 0)}-{_number(self.cpu_max, 0)}% "
            f"(mean {_number(self.cpu_mean, 0)}%)"
            if self.cpu_mean is not None
            else ""
        )
        return (
            f"history {when}: {self.samples} load samples{load}, "
            f"{self.restarts} restart{'' if self.restarts == 1 else 's'}"
        )


def summarise(batches: Iterable[Records]) -> History | None:
    """The history of the records in `batches`; None if there are none."""
    first, last = float("inf"), float("-inf")
    cpu: list[float] = []
    restarts = 0
    for batch in batches:
        if batch.ts:
            first, last = min(first, min(batch.ts)), max(last, max(batch.ts))
        if batch.stream not in ("metrics", "events"):
            continue
        for raw in batch.bodies:
            try:
                body = _BODY.decode(raw)
            except msgspec.DecodeError:
                continue  # the hub refuses it as over MQTT; it counts for nothing here
            if batch.stream == "events":
                restarts += body.get("event") == STARTED
            elif body.get("kind") == rollup.KIND:
                value = (body.get("load") or {}).get("cpu_percent")
                if isinstance(value, int | float):
                    cpu.append(float(value))
    if first > last:
        return None
    return History(
        since=first,
        until=last,
        samples=len(cpu),
        restarts=restarts,
        cpu_min=min(cpu) if cpu else None,
        cpu_max=max(cpu) if cpu else None,
        cpu_mean=round(sum(cpu) / len(cpu), 2) if cpu else None,
    )


def _number(value: float | None, decimals: int) -> str:
    """A device's number, shown short whatever its size (it is the device's word)."""
    if value is not None and abs(value) < 1e9:
        return f"{value:.{decimals}f}"
    return f"{value:.3g}" if value is not None else "?"


def _utc(at: float) -> str:
    """`at` as a date; a time no calendar holds (a device's record times are its word:
    1e300 is valid on the wire) as the number it is, not an error ending the import."""
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return f"{at:.6g} s (not a date)"
