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
Ties go to the device holding fewer tasks, then to one picked among them by the task's
hash (spreading tasks evenly over equal devices without favouring one). Tasks are
planned in priority order (then deadline), so high-priority work takes the free slots first.
"""

from __future__ import annotations

import bisect
import heapq
import json
import zlib

from hub.store.candidates import Candidate
from hub.store.leases import Queued

W_FREE, W_CPU, W_HEAT, W_SLOW = 1.0, 0.5, 0.5, 0.3
HEAT_FROM_C, HEAT_FULL_C = 60.0, 85.0
LATENCY_SCALE_MS = 50.0


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
    # The devices each kind of task matches, ranked once per pass: most queued tasks
    # share a few kinds, and weighing every online device for every task made a burst of
    # 2,000 tasks into 25,000 devices 50 million steps. A task now costs a few heap steps.
    pools: dict[tuple[object, ...], _Pool] = {}
    targets: dict[int, str] = {}
    by_id: dict[str, Candidate] = {}  # filled for the first task naming a device
    chosen = []
    for task in queued:
        kind = _kind(task, targets)
        pool = pools.get(kind)
        if pool is None:
            named = task.target.get("device")
            if named:  # one kind per device named: looked up, not searched for
                if not by_id:
                    by_id = {c.device_id: c for c in candidates}
                found = by_id.get(named)
                matching = [] if found is None else [found]
            else:
                matching = _matching(task, candidates)
            pool = pools[kind] = _Pool(matching, held)
        pick = pool.take(_hash(task.task_id), task.excluded)
        if pick is not None:
            chosen.append((task.task_id, pick))
    return chosen


def _matching(task: Queued, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates `task` matches, when it names no device."""
    # A match depends only on the labels and the model list, and devices with the same
    # texts share those objects (the store parses each distinct text once): matched once
    # per pair, not once per device.
    fits: dict[tuple[int, int], bool] = {}
    out = []
    for device in candidates:
        pair = (id(device.labels), id(device.models))
        fit = fits.get(pair)
        if fit is None:
            fit = fits[pair] = matches(task, device)
        if fit:
            out.append(device)
    return out


class _Pool:
    """The devices one kind of task matches, by rank: devices of equal rank (score, then
    fewest held) share a bucket, sorted by their ids' hash, and a heap orders the buckets.

    `held` is shared by a pass's pools: a device given a task through another pool is
    found out of date here when it comes up, and moved to its new rank then."""

    def __init__(self, devices: list[Candidate], held: dict[str, int]) -> None:
        self._held = held
        # Of each device: its slots and the part of its score that does not depend on
        # what it holds (score(device, held) = W_FREE * (1 - held / slots) + fixed).
        self._weights: dict[str, tuple[int, float]] = {}
        self._buckets: dict[tuple[float, int], list[tuple[int, str, int]]] = {}
        # `_place` inlined: a pass ranks every online device for its first task.
        for device in devices:
            device_id, slots = device.device_id, device.slots
            count = held[device_id]
            fixed = score(device, 0) - W_FREE
            self._weights[device_id] = (slots, fixed)
            if count >= slots:
                continue
            rank = (-(W_FREE * (1.0 - count / slots) + fixed), count)
            bucket = self._buckets.get(rank)
            if bucket is None:
                bucket = self._buckets[rank] = []
            bucket.append((_hash(device_id), device_id, count))
        for bucket in self._buckets.values():
            bucket.sort()
        self._ranks = list(self._buckets)  # a min-heap: the best rank first
        heapq.heapify(self._ranks)

    def _place(self, device_id: str, count: int) -> None:
        slots, fixed = self._weights[device_id]
        if count >= slots:
            return  # full: it leaves the pool
        rank = (-(W_FREE * (1.0 - count / slots) + fixed), count)
        bucket = self._buckets.get(rank)
        if bucket is None:
            bucket = self._buckets[rank] = []
            heapq.heappush(self._ranks, rank)
        bisect.insort(bucket, (_hash(device_id), device_id, count))

    def take(self, mine: int, excluded: frozenset[str]) -> str | None:
        """The best device not `excluded`, one of equal rank chosen by the task's hash
        `mine` (which spreads tasks evenly over equal devices); it holds one more."""
        passed: list[tuple[float, int]] = []  # ranks whose devices the task excludes
        try:
            while self._ranks:
                rank = self._ranks[0]
                bucket = self._buckets.get(rank)
                if not bucket:
                    heapq.heappop(self._ranks)
                    self._buckets.pop(rank, None)
                    continue
                pick = self._take_from(bucket, mine, excluded)
                if pick is not None:
                    return pick
                if bucket:  # every device left in it is excluded: look past it
                    passed.append(heapq.heappop(self._ranks))
            return None
        finally:
            for rank in passed:
                heapq.heappush(self._ranks, rank)

    def _take_from(
        self, bucket: list[tuple[int, str, int]], mine: int, excluded: frozenset[str]
    ) -> str | None:
        tried = 0
        index = mine % len(bucket)
        while bucket and tried < len(bucket):
            index %= len(bucket)
            _, device_id, count = bucket[index]
            held = self._held[device_id]
            if held != count:  # given a task through another pool: its rank moved
                del bucket[index]
                self._place(device_id, held)
                continue
            if device_id in excluded:
                index += 1
                tried += 1
                continue
            del bucket[index]
            self._held[device_id] = held + 1
            self._place(device_id, held + 1)
            return device_id
        return None


def _hash(text: str) -> int:
    return zlib.crc32(text.encode())
