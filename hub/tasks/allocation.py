"""Who runs a task: eligibility and the score, in one place.

A device is eligible for a task when it is online, takes tasks, has room (the tasks the
hub counts as assigned to it and unfinished are fewer than its concurrency plus the
work it may be given ahead), did not already reject or lose that task, and matches its
target: the named device; or, for a label selector or "any device", a device that
reports the model (and the version, if one is asked) loaded and ready.

Among eligible devices the highest score wins:

    score = 1.0 * free      share of its slots still free: 1 - held / slots
          - 0.5 * cpu       CPU use, 0..1; unknown (no fresh heartbeat) counts as 1
          - 0.5 * heat      0 up to 60 C, rising to 1 at 85 C; unknown counts as 0
          - 0.3 * slowness  recent task latency L (ms) as L / (L + 50); unknown: 0

so an idle, cool, quick device is preferred, a busy one still gets work when nothing
better is free, and a device whose load is unknown is never mistaken for an idle one.
Ties go to the device holding fewer tasks, then to a hash of the task and device ids
(spreading equal devices without favouring one). Tasks are planned in priority order
(then deadline), so high-priority work takes the free slots first.
"""

from __future__ import annotations

import json
import zlib

from hub.store.leases import Candidate, Queued

W_FREE, W_CPU, W_HEAT, W_SLOW = 1.0, 0.5, 0.5, 0.3
HEAT_FROM_C, HEAT_FULL_C = 60.0, 85.0
LATENCY_SCALE_MS = 50.0
# The tie-break mixes the task's and the device's CRC-32 with this multiplier (2^32 over
# the golden ratio): CRC-32 is linear, and the bare XOR of the two (as a CRC of both ids
# joined, before) split 4,000 tasks over 20 equal devices 121 to 258 each; mixed, 184 to 232.
GOLDEN = 0x9E3779B1


def score(device: Candidate, held: int) -> float:
    free = 1.0 - held / device.slots if device.slots else 0.0
    cpu = 1.0 if device.cpu_percent is None else device.cpu_percent / 100.0
    heat = 0.0
    if device.temperature_c is not None:
        heat = (device.temperature_c - HEAT_FROM_C) / (HEAT_FULL_C - HEAT_FROM_C)
        heat = min(1.0, max(0.0, heat))
    slowness = 0.0
    if device.latency_ms is not None:
        slowness = device.latency_ms / (device.latency_ms + LATENCY_SCALE_MS)
    return W_FREE * free - W_CPU * cpu - W_HEAT * heat - W_SLOW * slowness


def matches(task: Queued, device: Candidate) -> bool:
    """Whether the device fits the task's target and model; the same for every task of one
    kind (`_kind`). A device that fits is eligible unless the task excludes it or it has no
    room, which `plan` checks per task."""
    named = task.target.get("device")
    if named:
        return bool(device.device_id == named)  # the operator chose it; it will say if it can
    selector = task.target.get("selector") or {}
    if any(device.labels.get(k) != v for k, v in selector.items()):
        return False
    if task.version:
        return (task.model, task.version) in device.models
    return any(name == task.model for name, _ in device.models)


def _kind(task: Queued, targets: dict[int, str]) -> tuple[object, ...]:
    """What `matches` depends on: tasks of one kind match the same devices. `targets`
    holds each target's text by the object's id: the store hands tasks of one target the
    same decoded dict, so most passes encode one or two."""
    target = targets.get(id(task.target))
    if target is None:
        target = targets[id(task.target)] = json.dumps(task.target, sort_keys=True)
    return (target, task.model, task.version)


def plan(queued: list[Queued], candidates: list[Candidate]) -> list[tuple[str, str]]:
    """Pick a device for each queued task that has one; tasks come in priority order."""
    held = {c.device_id: c.held for c in candidates}
    # The devices each kind of task matches, found once per pass: most queued tasks share
    # a few kinds, and matching every task against every online device dominated a
    # pass's time with thousands of devices.
    matching: dict[tuple[object, ...], list[_Scored]] = {}
    targets: dict[int, str] = {}
    chosen = []
    for task in queued:
        kind = _kind(task, targets)
        pool = matching.get(kind)
        if pool is None:
            pool = matching[kind] = _pool(task, candidates)
        # The best key is (score, -held, spread); each device is looked at once, so a
        # task costs a few operations per matching device (a pass with one new task and
        # 25,000 idle devices is mostly this loop).
        mine = _hash(task.task_id)
        excluded = task.excluded
        best: tuple[float, int, int] | None = None
        pick = None
        for device_id, slots, fixed, spread in pool:
            count = held[device_id]
            if count >= slots or device_id in excluded:
                continue
            tie = ((spread ^ mine) * GOLDEN) & 0xFFFFFFFF
            key = (W_FREE * (1.0 - count / slots) + fixed, -count, tie)
            if best is None or key > best:
                best, pick = key, device_id
        if pick is not None:
            held[pick] += 1
            chosen.append((task.task_id, pick))
    return chosen


def _pool(task: Queued, candidates: list[Candidate]) -> list[_Scored]:
    """The candidates `task` matches, as `plan` weighs them."""
    if task.target.get("device"):
        return [_scored(d) for d in candidates if matches(task, d)]
    # Otherwise a match depends only on the labels and the model list, and devices with
    # the same texts share those objects (the store parses each distinct text once):
    # matched once per pair, not once per device.
    fits: dict[tuple[int, int], bool] = {}
    pool = []
    for device in candidates:
        pair = (id(device.labels), id(device.models))
        fit = fits.get(pair)
        if fit is None:
            fit = fits[pair] = matches(task, device)
        if fit:
            pool.append(_scored(device))
    return pool


# A matching device as `plan` weighs it: id, slots, the part of its score that does not
# depend on what it holds, and its id's hash, which the task's hash turns into the tie-break
# (spreading equal devices over tasks without favouring one).
_Scored = tuple[str, int, float, int]


def _scored(device: Candidate) -> _Scored:
    fixed = score(device, 0) - W_FREE  # score(device, held) = W_FREE * free + fixed
    return device.device_id, device.slots, fixed, _hash(device.device_id)


def _hash(text: str) -> int:
    return zlib.crc32(text.encode())
