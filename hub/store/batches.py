"""A batch of device uploads applied as one unit of work: the records stored (records.py),
the task results among them ending their tasks (tasks.py), and the metric roll-ups among
them folded into the model statistics (modelstats.py), all in one durable transaction.

Runs on the store's worker thread.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import msgspec

from hub.store import modelfold, modelstats, outbox, records, tasks
from hub.store.records import Applied, Upload
from hub.store.sql import Sql


@dataclass(frozen=True)
class UploadOutcome:
    """What a call to `apply_uploads` did: per upload its result; task results by outcome;
    what the newly stored metric roll-ups counted."""

    applied: list[Applied]
    task_results: dict[str, int]
    rollups: modelstats.Folded = field(default_factory=modelstats.Folded)


def apply_uploads(db: Sql, uploads: list[Upload], now: float) -> UploadOutcome:
    """Store `uploads` in order and act on what was new in them, in one transaction."""
    outcomes: collections.Counter[str] = collections.Counter()
    folder = modelfold.Folder(now)

    def on_stored(db: Sql, upload: Upload, rows: list[tuple[int, float, bytes]]) -> None:
        if upload.stream == "metrics":  # roll-ups: folded once, as they are first stored
            folder.add(db, upload.device_id, rows)
            return
        if db.publishing:  # results and events, to the sinks, as first stored
            outbox.emit_many(db, outbox.records(upload.device_id, upload.stream, rows, now))
        if upload.stream != "results":
            return
        for _, _, body in rows:
            if b"task_id" not in body:  # most results are not task results: skip the decode
                continue
            try:
                data = msgspec.msgpack.decode(body)
            except (ValueError, RecursionError):
                continue
            if isinstance(data, dict) and data.get("kind") == "task":
                outcomes[tasks.apply_result(db, upload.device_id, data, now)] += 1

    def finish(db: Sql) -> None:
        folder.write(db)  # every roll-up of the batch, one read and write per table
        if folder.folded.added_hours:  # once per batch: the window's bound is the same
            modelstats.prune(db, now)

    applied = records.apply_uploads(db, uploads, now, on_stored, finish)
    return UploadOutcome(applied, dict(outcomes), folder.folded)
