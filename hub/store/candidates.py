"""The devices an allocation pass may give tasks to, as the planner sees them: read in
one statement, with what each may hold worked out in SQL (leases.py runs the pass)."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, cast

import msgspec

from hub.store.sql import Sql, marks

if TYPE_CHECKING:
    from hub.store.leases import Settings


# A msgspec struct, not a dataclass: a pass makes one for every online device, and a
# frozen dataclass's constructor took 3.1 us against 0.23 (78 ms a pass at 25,000).
class Candidate(msgspec.Struct, frozen=True):
    """An online device as the planner sees it."""

    device_id: str
    labels: dict[str, str]
    models: frozenset[tuple[str, str]]  # (name, version) loaded and ready
    slots: int  # tasks it may hold: its concurrency plus the work given ahead
    concurrency: int
    held: int  # tasks the hub counts as assigned to it and not finished
    cpu_percent: float | None  # None: no fresh load report (unknown, not idle)
    temperature_c: float | None
    latency_ms: float | None


# What a device may hold, worked out in SQL so that a pass can leave full devices unread:
# what its hello claims, bounded by `max_slots`; one task at a time until a result of
# its own has come back (the latency it reports with it: a claim is earned, not taken);
# plus the work given ahead; and never more than the inbox it said it has.
_CONCURRENCY = """CASE WHEN d.task_latency_ms IS NULL THEN 1
                      WHEN d.task_slots < ? THEN d.task_slots ELSE ? END"""
_SLOTS = f"""CASE WHEN d.task_inbox IS NOT NULL AND d.task_inbox > 0
                    AND d.task_inbox < ({_CONCURRENCY}) + ?
                  THEN d.task_inbox ELSE ({_CONCURRENCY}) + ? END"""
# Counted per device through the tasks_device index: grouping every task in flight
# instead took 181 ms with 150,000 of them (25,000 busy devices), the index 88 ms.
_HELD = """(SELECT COUNT(*) FROM tasks t WHERE t.device_id = d.device_id
              AND t.state IN ('assigned', 'accepted', 'running'))"""


def read_candidates(
    db: Sql,
    now: float,
    settings: Settings,
    *,
    with_room_only: bool = False,
    needed: set[str] | None = None,
    named: set[str] | None = None,
) -> list[Candidate]:
    """Online devices that take tasks; with `with_room_only`, only those holding fewer
    tasks than they may (all a pass can use: in a busy fleet, a few of many); with
    `needed` (model names), only those whose reported models name one of them (in any state: the
    planner checks which are ready), and those `named` (a task names the device: it is
    given it whatever it reports, and says if it cannot run it)."""
    concurrency_params = [settings.max_slots, settings.max_slots]
    slots_params = [*concurrency_params, settings.prefetch] * 2  # _CONCURRENCY + ?, twice
    params: list[object] = [*concurrency_params, *slots_params, now]
    where = "d.online = 1 AND d.task_slots > 0 AND d.busy_until <= ?"
    if with_room_only:
        where += f" AND {_HELD} < ({_SLOTS})"
        params += slots_params
    if needed is not None:
        patterns = sorted({p for name in needed for p in _naming(name)})
        ids = sorted(named or ())
        alternatives = ["d.models LIKE ? ESCAPE '\\'"] * len(patterns)
        if ids:
            alternatives.append(f"d.device_id IN ({marks(len(ids))})")
        where += " AND (" + " OR ".join(alternatives) + ")"
        params += [*patterns, *ids]
    out = []
    stale_s = settings.stale_after_heartbeats
    # Rows unpacked by position: a pass reads every online device with room, and each
    # lookup by column name cost more than the rest of the loop.
    for (
        device_id,
        labels,
        models,
        load,
        last_heartbeat,
        interval,
        latency_ms,
        concurrency,
        slots,
        held,
    ) in db.execute(
        f"""SELECT d.device_id, d.labels, d.models, d.load, d.last_heartbeat,
                d.heartbeat_interval, d.task_latency_ms, {_CONCURRENCY}, {_SLOTS}, {_HELD}
            FROM devices d WHERE {where}""",  # noqa: S608 - only fixed fragments; values are bound
        params,
    ).fetchall():
        cpu_percent = temperature_c = None
        if last_heartbeat is not None and now - last_heartbeat <= stale_s * (interval or 0):
            cpu_percent, temperature_c = _load_of(load)
        out.append(
            Candidate(
                device_id=device_id,
                labels=_labels_of(labels),
                models=_ready_models_of(models),
                slots=slots,
                concurrency=concurrency,
                held=held,
                cpu_percent=cpu_percent,
                temperature_c=temperature_c,
                latency_ms=latency_ms,
            )
        )
    return out


def _naming(name: str) -> set[str]:
    """LIKE patterns that match a device's models text naming the model `name`: its
    JSON string as the hub writes it (json.dumps, non-ASCII escaped) and as UTF-8. A
    text naming it otherwise (as a version or an error) matches too: a row read for
    nothing, never a device left out."""
    forms = {json.dumps(name), json.dumps(name, ensure_ascii=False)}
    return {
        "%" + f.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for f in forms
    }


# A pass reads every online device's row: 25,000 rows took 250 ms, 110 of it parsing
# their JSON. Labels and model lists repeat across a fleet and rarely change, so each
# distinct text is parsed once (the parsed values are shared: the planner only reads
# them); of the load, changed by every heartbeat, only the two numbers the planner
# uses are decoded.
@functools.lru_cache(maxsize=4096)
def _labels_of(text: str) -> dict[str, str]:
    return cast(dict[str, str], json.loads(text))


@functools.lru_cache(maxsize=4096)
def _ready_models_of(text: str | None) -> frozenset[tuple[str, str]]:
    return frozenset(
        (m["name"], m["version"]) for m in json.loads(text or "[]") if m.get("state") == "ready"
    )


class _Load(msgspec.Struct):
    cpu_percent: float | msgspec.UnsetType | None = msgspec.UNSET
    temperature_c: float | msgspec.UnsetType | None = msgspec.UNSET


_LOAD = msgspec.json.Decoder(_Load)


def _load_of(text: str | None) -> tuple[float | None, float | None]:
    """A fresh load's CPU and temperature; both None when it names no CPU."""
    try:
        load = _LOAD.decode(text or "{}")
    except msgspec.DecodeError:  # not the shape the hub writes: read it as before
        loose = json.loads(text or "{}")
        if "cpu_percent" not in loose:
            return None, None
        return loose.get("cpu_percent"), loose.get("temperature_c")
    if load.cpu_percent is msgspec.UNSET:
        return None, None
    temperature = None if load.temperature_c is msgspec.UNSET else load.temperature_c
    return load.cpu_percent, temperature
