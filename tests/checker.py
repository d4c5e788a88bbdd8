"""A checker for fault-injection runs: what the agents confirmed against what the hub holds.

Records are keyed by device, stream and sequence number, and each carries a payload id
of its own (`uid`), so a record stored twice under two numbers is caught as well as one
lost. Tasks are keyed by task id and attempt: every submitted task must end in exactly
one terminal state, and no result may be accepted twice.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from hub.store import Task

TERMINAL = ("succeeded", "failed", "expired", "cancelled")
ACCEPTED = ("succeeded", "failed")  # a device's result ended the task


@dataclass(frozen=True)
class Held:
    """A record as the hub stored it."""

    seq: int
    received_at: float
    body: dict[str, Any]


def held_records(database: Path, device_id: str, stream: str) -> list[Held]:
    """What the hub's database holds for a device and stream, in seq order."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT seq, received_at, body FROM records WHERE device_id = ? AND stream = ?"
            " ORDER BY seq",
            (device_id, stream),
        ).fetchall()
    return [Held(seq, at, msgpack.unpackb(body)) for seq, at, body in rows]


@dataclass
class RecordVerdict:
    confirmed: int
    at_hub: int  # records carrying a payload id, as the test posts them
    others: int  # records without one (the agent's own: inference and task results)
    missing: int
    duplicated: int
    out_of_order: int
    mismatched: int  # a confirmed seq whose hub record carries another uid


@dataclass
class TaskVerdict:
    submitted: int
    states: collections.Counter[str]
    not_ended: int  # no terminal state by the deadline
    ended_twice: int  # more than one terminal event
    accepted_twice: int  # more than one accepted result for one (task id, attempt)
    ran_twice: list[tuple[str, int]]  # (task id, attempt) with two result records


@dataclass
class Checker:
    # (device, stream) -> seq -> uid, as the agent's local API confirmed them
    confirmed: dict[tuple[str, str], dict[int, str]] = field(
        default_factory=lambda: collections.defaultdict(dict)
    )
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> the device targeted

    def confirm(self, device_id: str, stream: str, answer: dict[str, Any], uids: list[str]) -> None:
        """Note a 201 answer: `first_seq..last_seq` numbered the records posted, in order."""
        seqs = range(answer["first_seq"], answer["last_seq"] + 1)
        assert len(seqs) == len(uids), (answer, len(uids))
        self.confirmed[device_id, stream].update(zip(seqs, uids, strict=True))

    def submitted(self, device_id: str, task_ids: list[str]) -> None:
        self.tasks.update(dict.fromkeys(task_ids, device_id))

    def missing(self, device_id: str, stream: str, held: list[Held]) -> int:
        at_hub = {h.body.get("uid") for h in held}
        return sum(uid not in at_hub for uid in self.confirmed[device_id, stream].values())

    def records(self, device_id: str, stream: str, held: list[Held]) -> RecordVerdict:
        mine = self.confirmed[device_id, stream]
        by_seq = {h.seq: h.body.get("uid") for h in held}
        uids = collections.Counter(h.body["uid"] for h in held if "uid" in h.body)
        seqs = collections.Counter(h.seq for h in held)
        # Out of order: a record that reached the hub before one numbered below it.
        out_of_order, earliest = 0, float("inf")
        for h in reversed(held):
            out_of_order += h.received_at > earliest
            earliest = min(earliest, h.received_at)
        return RecordVerdict(
            confirmed=len(mine),
            at_hub=sum("uid" in h.body for h in held),
            others=sum("uid" not in h.body for h in held),
            missing=self.missing(device_id, stream, held),
            duplicated=sum(n - 1 for n in uids.values()) + sum(n - 1 for n in seqs.values()),
            out_of_order=out_of_order,
            mismatched=sum(seq in by_seq and by_seq[seq] != uid for seq, uid in mine.items()),
        )

    def task_verdict(
        self, device_id: str, found: dict[str, Task], results: list[dict[str, Any]]
    ) -> TaskVerdict:
        """Judge the tasks sent to one device, given the hub's tasks and its result records."""
        ids = [t for t, d in self.tasks.items() if d == device_id]
        states: collections.Counter[str] = collections.Counter()
        not_ended = ended_twice = accepted_twice = 0
        for task_id in ids:
            task = found[task_id]
            states[task.state] += 1
            terminal = [e for e in task.events if e.state in TERMINAL]
            not_ended += not terminal
            ended_twice += len(terminal) > 1
            accepted = collections.Counter(e.attempt for e in task.events if e.state in ACCEPTED)
            accepted_twice += sum(n > 1 for n in accepted.values())
        # The device's own result records: one per (task id, attempt) at most.
        sent = collections.Counter((r["task_id"], int(r["attempt"])) for r in results)
        twice = [key for key, n in sent.items() if n > 1]
        return TaskVerdict(len(ids), states, not_ended, ended_twice, accepted_twice, twice)
