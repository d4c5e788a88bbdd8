"""The store's units of work for what devices send and do: upload streams, tasks and their
leases, policy layers and versions, model statistics and the dashboard's overview.

A part of `HubStore` (hub/store/__init__.py), apart so that no file of the facade runs
past a few hundred lines; each method runs its SQL module's function on the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.store import batches, gauges, leases, modelstats, taskreports, tasks
from hub.store import overview as glance  # `overview` is also a method name below
from hub.store import policy as policies
from hub.store import records as streams  # `records` is also a method name below
from hub.store.audit import AuditEntry
from hub.store.batches import UploadOutcome
from hub.store.engine import Engine
from hub.store.leases import Assigned
from hub.store.leases import Settings as TaskSettings
from hub.store.policy import Effective, Layer, ToPublish
from hub.store.records import StoredRecord, StreamCount, Upload
from hub.store.tasks import NewTask, Task


class WorkStore:
    """Records, tasks, policy and statistics, awaited from the event loop."""

    _db: Engine

    # ------------------------------------------------------------ upload streams

    async def apply_uploads(self, uploads: Sequence[Upload], *, now: float) -> UploadOutcome:
        """Store batches of records (any devices) and move their marks in one durable
        transaction, in order; return, for each, its mark and whether it was a gap.

        Task results among the new records end their tasks in that same transaction
        (first valid result wins; the rest are recorded as late)."""
        return await self._db.run(batches.apply_uploads, list(uploads), now)

    async def stream_marks(self, device_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        """The mark of each (device, stream) the hub holds anything of."""
        return await self._db.run(streams.marks, list(device_ids))

    async def records(
        self, device_id: str, stream: str, *, after: int, limit: int
    ) -> list[StoredRecord]:
        """A page of a device's stream, in seq order, after the seq `after`."""
        return await self._db.run(streams.page, device_id, stream, after, limit)

    async def stream_counts(self, device_id: str) -> list[StreamCount]:
        """Records held and mark per stream of a device (streams it never sent are absent)."""
        return await self._db.run(streams.counts, device_id)

    # ------------------------------------------------------------ tasks

    async def create_tasks(
        self, new: Sequence[NewTask], *, now: float, audits: Sequence[AuditEntry] = ()
    ) -> None:
        """Queue `new`, and record `audits` (their submission's entries) in the same commit."""
        await self._db.run(tasks.create, list(new), now, list(audits))

    async def task(self, task_id: str) -> Task | None:
        return await self._db.run(tasks.get, task_id)

    async def tasks_page(
        self,
        *,
        states: Sequence[str] = (),
        device_id: str | None = None,
        model: str | None = None,
        after: int | None = None,
        limit: int = 50,
        newest_first: bool = False,
    ) -> list[Task]:
        return await self._db.run(
            lambda db: tasks.page(
                db,
                states=states,
                device_id=device_id,
                model=model,
                after=after,
                limit=limit,
                newest_first=newest_first,
            )
        )

    async def task_counts(self) -> dict[str, int]:
        return await self._db.run(tasks.counts)

    async def cancel_task(self, task_id: str, *, now: float) -> tuple[Task | None, str]:
        """Cancel; returns the task and the device to tell ("" if none held it)."""
        return await self._db.run(tasks.cancel, task_id, now)

    async def allocate(
        self, *, now: float, settings: TaskSettings, plan: leases.Plan
    ) -> tuple[list[Assigned], dict[str, int]]:
        """Expire, lapse and assign tasks in one transaction (see `leases.allocate`)."""
        return await self._db.run(leases.allocate, now, settings, plan)

    async def create_and_allocate(
        self,
        new: Sequence[NewTask],
        *,
        now: float,
        settings: TaskSettings,
        plan: leases.Plan,
        audits: Sequence[AuditEntry] = (),
    ) -> tuple[list[Assigned], dict[str, int]]:
        """`create_tasks` and `allocate` in one transaction (see `leases.create_and_allocate`)."""
        return await self._db.run(
            leases.create_and_allocate, list(new), now, settings, plan, list(audits)
        )

    async def task_updates(
        self, device_id: str, updates: Sequence[Any], *, now: float, settings: TaskSettings
    ) -> list[tuple[str, str]]:
        return await self._db.run(taskreports.update, device_id, list(updates), now, settings)

    async def task_updates_many(
        self, reports: Sequence[tuple[str, Sequence[Any]]], *, now: float, settings: TaskSettings
    ) -> list[list[tuple[str, str]]]:
        """`task_updates` of several devices in one (soft) transaction."""
        return await self._db.run(taskreports.update_many, list(reports), now, settings)

    # ------------------------------------------------------------ policy

    async def put_policy_layer(self, layer: Layer) -> None:
        await self._db.run(policies.put_layer, layer)

    async def delete_policy_layer(self, name: str) -> bool:
        return await self._db.run(policies.delete_layer, name)

    async def policy_layers(self) -> list[Layer]:
        return await self._db.run(policies.layers)

    async def refresh_policies(
        self, device_ids: list[str] | None, *, now: float
    ) -> list[ToPublish]:
        """New versions for devices whose effective policy changed (all devices if None),
        and any not yet published."""
        return await self._db.run(policies.refresh, device_ids, now)

    async def mark_policy_published(self, published: list[tuple[str, int]]) -> list[str]:
        """(device id, version) pairs sent; the devices to send their newer version again."""
        return await self._db.run(policies.mark_published, published)

    async def device_policy(self, device_id: str) -> Effective | None:
        return await self._db.run(policies.effective, device_id)

    async def policy_drift(self) -> int:
        return await self._db.run(policies.drift)

    # ------------------------------------------------------------ model statistics

    async def model_distributions(
        self, *, since: float
    ) -> dict[tuple[str, str], dict[str, modelstats.Distribution]]:
        """Per (model, version): each unrevoked device's inferences from `since` on.

        Read an hour a unit of work: on SQLite every unit takes the one database thread,
        and the whole day of a 25,000-device fleet (600,000 rows) took it for 4 s, with
        the fleet's ingest queued behind; an hour's rows take a 25th of that. Each hour's
        rows are one snapshot, but the day is not: roll-ups folded while it is read count
        where they land in an hour not yet read (a batch across an hour's end, half),
        never twice. A device revoked meanwhile is left out whole, by a last unit: its
        hours read before would have kept it judged, and in the others' reference."""
        sums = modelstats.Sums()
        for hour in await self._db.run(modelstats.hours_since, since):
            await self._db.run(modelstats.add_hour, sums, hour)
        sums.drop(await self._db.run(modelstats.revoked_devices))
        return sums.distributions()

    async def device_errors(self, device_id: str, *, since: float) -> dict[str, int]:
        return await self._db.run(modelstats.device_errors, device_id, since)

    async def fleet_gauges(self, *, now: float) -> gauges.FleetGauges:
        return await self._db.run(gauges.read, now)

    # ------------------------------------------------------------ dashboard

    async def overview(
        self, *, after: int | None, max_devices: int, max_rollouts: int, max_events: int
    ) -> glance.Overview:
        """The fleet, tasks by state, tasks ended since the transition `after` per model,
        and the newest roll-outs, as of one moment (see `overview.read`)."""
        return await self._db.run(glance.read, after, max_devices, max_rollouts, max_events)
