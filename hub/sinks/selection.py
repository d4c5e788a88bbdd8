"""A sink's selector: which device events it takes, each judged by its device's labels as
they were when the event happened, as far as the outbox lets the drain know them.

The outbox keeps no labels with an event, so the drain reads the devices' labels (today's)
and corrects them with the batch's own `device.relabelled` events: a device relabelled in
a batch has its events before that judged by the labels held before, and from it on by
the labels it set. A relabelled event itself passes when the device matched before or
after it: a sink learns that a device joined its selection, or left it. What stays
approximate: a backlog older than the labels read, for a device relabelled since whose
relabelling is not in the same batch, is judged by the newer labels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from hub.fleet.labels import KEY
from hub.store import HubStore, outbox
from hub.store.events import DETAIL_MAX
from hub.store.outbox import OutboxEvent

RELABELLED = "org.outpost.device.relabelled"
LABELS_FRESH_S = 5.0  # devices' labels, for selectors, are read again this often
# An event of a device missing from the labels read is a new device's if it is at most
# this much older than the read (its transaction may commit after the read; replicas'
# clocks differ): the labels are read again rather than the event dropped.
NEW_DEVICE_S = 60.0

Labels = Mapping[str, str]


class Selection:
    """The labels a drain's selector judges by, read again when they may be out of date."""

    def __init__(self, store: HubStore, selector: Mapping[str, str]) -> None:
        self._store = store
        self._selector = selector
        self._labels: dict[str, Labels] = {}
        self._labels_at = float("-inf")
        self._labels_read = float("-inf")  # wall clock, to compare with events' times

    async def judge(self, rows: list[OutboxEvent]) -> list[bool]:
        """Whether each of `rows` passes the selector (fleet-wide events always do)."""
        if not self._selector:
            return [True] * len(rows)
        held = self._labels
        await self._refresh(rows)
        now = self._labels
        moved = {r.subject for r in rows if r.type == RELABELLED}
        # Until its relabelling, a device moved in this batch keeps the labels held
        # before this read (the read already shows the move).
        as_of = {d: held.get(d, now.get(d, {})) for d in moved}
        out = []
        for row in rows:
            device = row.subject
            if not device:
                out.append(True)
            elif device not in as_of:
                out.append(self._matches(now.get(device, {})))
            elif row.type == RELABELLED:
                after = stated(row, now.get(device, {}))
                out.append(self._matches(as_of[device]) or self._matches(after))
                as_of[device] = after
            else:
                out.append(self._matches(as_of[device]))
        # Held as of the batch's end: a later relabelling in the backlog is judged then.
        self._labels = {**now, **as_of}
        return out

    def _matches(self, labels: Labels) -> bool:
        return all(labels.get(k) == v for k, v in self._selector.items())

    async def _refresh(self, rows: list[OutboxEvent]) -> None:
        # A device new since the last read (its enrollment is among `rows`) would be
        # judged without its labels, and its events dropped: read them again at once.
        # Events of devices unknown for longer (removed since) do not trigger a read.
        # A relabelling does too: judged by labels up to LABELS_FRESH_S old, a device
        # moved into the selector would have that event and the next ones dropped.
        unknown = any(
            r.type == RELABELLED
            or (
                r.subject
                and r.subject not in self._labels
                and r.at > self._labels_read - NEW_DEVICE_S
            )
            for r in rows
        )
        if not unknown and time.monotonic() - self._labels_at < LABELS_FRESH_S:
            return
        self._labels_read = time.time()
        self._labels = dict(await self._store.run(outbox.device_labels))
        self._labels_at = time.monotonic()


def stated(row: OutboxEvent, now: Labels) -> Labels:
    """The labels a `device.relabelled` event set: `now` when the event names them (no
    later relabelling), else its own words read back, else `now` (they did not parse)."""
    detail = str(row.data.get("detail", ""))
    if detail == _detail(now):
        return now
    parsed = _parsed(detail)
    return parsed if parsed is not None else now


def _detail(labels: Labels) -> str:
    """A relabelling's detail as hub/store/devices.py writes it: `labels k=v,k2=v2`."""
    return "labels " + (",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none")


def _parsed(detail: str) -> dict[str, str] | None:
    """The labels in a relabelling's detail, or None where they cannot be told: the detail
    was cut at DETAIL_MAX, or is not of that form. A value holding ',' is glued back to
    its key (a piece that is no `key=`); one holding ',key=' cannot be told apart."""
    if len(detail) >= DETAIL_MAX or not detail.startswith("labels "):
        return None
    text = detail.removeprefix("labels ")
    if text == "none":
        return {}
    labels: dict[str, str] = {}
    last = ""
    for piece in text.split(","):
        key, sep, value = piece.partition("=")
        if sep and KEY.fullmatch(key) and key not in labels:
            labels[key] = value
            last = key
        elif last:
            labels[last] += "," + piece
        else:
            return None
    return labels if _detail(labels) == detail else None
