"""The hub's persistence: the one package that speaks SQL (SQLite now, PostgreSQL later).

The database, not memory, is the truth: every handler goes through `HubStore`, and each
method is a whole unit of work, so several hub replicas could share one database. The
SQL lives in one module per concern (devices, tokens, audit, records); this facade runs
it on the store's single writer thread.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hub.store import (
    audit,
    batches,
    catalog,
    certs,
    devices,
    events,
    gauges,
    leases,
    modelfiles,
    modelstats,
    rollouts,
    tasks,
    tokens,
)
from hub.store import overview as glance  # `overview` is also a method name below
from hub.store import policy as policies
from hub.store import records as streams  # `records` is also a method name below
from hub.store.audit import AuditEntry
from hub.store.batches import UploadOutcome
from hub.store.catalog import StoredModel
from hub.store.certs import IssuedCert, RenewalState, RevokedCert
from hub.store.devices import (
    ConnectionLost,
    Device,
    HeartbeatSeen,
    HelloSeen,
    ListedDevice,
    NameTakenError,
    PresenceEvent,
)
from hub.store.engine import Engine, FencedEngine, PublishingEngine, open_engine, retries
from hub.store.events import DeviceEvent
from hub.store.leases import Assigned, Candidate, Known
from hub.store.leases import Settings as TaskSettings
from hub.store.policy import Effective, Layer, ToPublish
from hub.store.records import MAX_SEQ, Applied, StoredRecord, StreamCount, Upload
from hub.store.rollouts import Advanced, Rollout, RolloutRefusedError
from hub.store.sql import Sql
from hub.store.tasks import NewTask, Task
from hub.store.tokens import ApiTokenRecord, TokenRefusedError

__all__ = [
    "MAX_SEQ",
    "Advanced",
    "ApiTokenRecord",
    "Applied",
    "Assigned",
    "AuditEntry",
    "ConnectionLost",
    "Device",
    "DeviceEvent",
    "Effective",
    "HeartbeatSeen",
    "HelloSeen",
    "HubStore",
    "IssuedCert",
    "Layer",
    "ListedDevice",
    "NameTakenError",
    "NewTask",
    "PresenceEvent",
    "RenewalState",
    "RevokedCert",
    "Rollout",
    "RolloutRefusedError",
    "StoredModel",
    "StoredRecord",
    "StreamCount",
    "Task",
    "TaskSettings",
    "ToPublish",
    "TokenRefusedError",
    "Upload",
    "UploadOutcome",
]

T = TypeVar("T")


class HubStore:
    """Registry, tokens, audit log and upload streams, awaited from the event loop."""

    def __init__(
        self, database: Path | str, *, busy_timeout_ms: int = 5000, pool_size: int = 4
    ) -> None:
        """Open (and migrate) `database`: a SQLite path, or a URL (see engine.py)."""
        self._db: Engine = open_engine(
            database, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size
        )

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def conflicts(self) -> int:
        """Units of work run again because a concurrent one won (PostgreSQL; SQLite's
        single writer has none)."""
        return retries(self._db)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a unit of work of the hub's own (leadership, ...) on the store's engine."""
        return await self._db.run(fn, *args)

    def close(self) -> None:
        self._db.close()

    def publish_events(self) -> None:
        """From now on, write events for the sinks with the changes they describe (a hub
        with sinks configured; call before making fenced views)."""
        self._db = PublishingEngine(self._db)

    def fenced(self, fence: Callable[[Sql], None]) -> HubStore:
        """The same store, each of whose units of work first runs `fence` in its own
        transaction (the leader's check that it still leads: hub/leadership.py)."""
        view = copy.copy(self)
        view._db = FencedEngine(self._db, fence)
        return view

    # ------------------------------------------------------------ bootstrap tokens

    async def add_enroll_token(
        self, jti: str, *, now: float, expires_at: float, labels: dict[str, str]
    ) -> None:
        await self._db.run(tokens.add_enroll_token, jti, now, expires_at, labels)

    def add_enroll_token_sync(
        self, jti: str, *, now: float, expires_at: float, labels: dict[str, str]
    ) -> None:
        self._db.run_sync(tokens.add_enroll_token, jti, now, expires_at, labels)

    async def consume_enroll_token(self, jti: str, *, now: float) -> dict[str, str]:
        """Mark the token used and return its labels, or raise `TokenRefusedError`."""
        return await self._db.run(tokens.consume_enroll_token, jti, now)

    async def bind_enroll_token(self, jti: str, device_id: str) -> None:
        await self._db.run(tokens.bind_enroll_token, jti, device_id)

    # ------------------------------------------------------------ API tokens

    async def add_api_token(self, record: ApiTokenRecord) -> None:
        await self._db.run(tokens.add_api_token, record)

    def add_api_token_sync(self, record: ApiTokenRecord) -> None:
        self._db.run_sync(tokens.add_api_token, record)

    async def api_token_state(self, jti: str) -> str:
        return await self._db.run(tokens.api_token_state, jti)

    async def revoke_api_token(self, jti: str, *, now: float) -> str:
        return await self._db.run(tokens.revoke_api_token, jti, now)

    def revoke_api_token_sync(self, jti: str, *, now: float) -> str:
        return self._db.run_sync(tokens.revoke_api_token, jti, now)

    async def api_tokens(self, *, after: int | None, limit: int) -> list[ApiTokenRecord]:
        return await self._db.run(lambda db: tokens.list_api_tokens(db, after=after, limit=limit))

    def api_tokens_sync(self) -> list[ApiTokenRecord]:
        return self._db.run_sync(lambda db: tokens.list_api_tokens(db, after=None, limit=-1))

    # ------------------------------------------------------------ devices

    async def add_device(self, device: Device) -> str:
        """Register an enrolled device; the name it got (its own, or `name-N` if taken)."""
        return await self._db.run(devices.add_device, device)

    async def record_presence(self, events: Sequence[PresenceEvent]) -> list[bool]:
        """Apply presence events in order, in one transaction (one thread hop for a whole
        batch); return, for each, whether it changed the device's online state."""
        return await self._db.run(devices.record_presence, list(events))

    async def expire_silent(self, *, now: float, intervals: float) -> list[str]:
        """Mark offline every online device silent for `intervals` heartbeat intervals."""
        return await self._db.run(devices.expire_silent, now, intervals)

    async def devices(self) -> list[Device]:
        return await self._db.run(devices.all_devices)

    def devices_sync(self) -> list[Device]:
        return self._db.run_sync(devices.all_devices)

    async def device(self, device_id: str) -> Device | None:
        return await self._db.run(devices.get_device, device_id)

    async def find_device(self, ref: str) -> Device | None:
        """The device with this id or this name."""
        return await self._db.run(devices.find_device, ref)

    async def resolve_device(self, ref: str) -> str | None:
        """The id of the device with this id or this name."""
        return await self._db.run(devices.resolve, ref)

    def resolve_device_sync(self, ref: str) -> str | None:
        return self._db.run_sync(devices.resolve, ref)

    async def device_events(
        self, device_id: str, *, before: int | None, limit: int
    ) -> list[DeviceEvent]:
        """A page of the device's event log, newest first."""
        return await self._db.run(
            lambda db: events.newest_first(db, device_id, before=before, limit=limit)
        )

    async def prune_device_events(self) -> int:
        return await self._db.run(events.prune)

    async def list_devices(
        self,
        *,
        online: bool | None = None,
        profile: str | None = None,
        labels: dict[str, str] | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> list[ListedDevice]:
        return await self._db.run(
            lambda db: devices.list_devices(
                db, online=online, profile=profile, labels=labels or {}, after=after, limit=limit
            )
        )

    async def update_device(
        self,
        device_id: str,
        *,
        labels: dict[str, str | None],
        name: str | None = None,
        now: float,
    ) -> Device | None:
        """Change labels and/or the name; NameTakenError if another device has the name."""
        return await self._db.run(devices.update_device, device_id, labels, name, now)

    async def fleet_models(self) -> set[tuple[str, str]]:
        """(name, version) of every model an unrevoked device reports."""
        return await self._db.run(devices.fleet_models)

    async def task_fleet(
        self, *, now: float, settings: TaskSettings
    ) -> tuple[list[Candidate], dict[str, Known]]:
        """The planner's candidates and every enrolled device: why tasks wait."""
        return await self._db.run(leases.task_fleet, now, settings)

    async def fleet_counts(self) -> list[tuple[bool, str, int]]:
        """(online, profile, devices) of the unrevoked devices."""
        return await self._db.run(devices.fleet_counts)

    async def state_counts(self) -> dict[str, int]:
        """Devices by state: online, offline (unrevoked) and revoked."""
        return await self._db.run(devices.state_counts)

    # ------------------------------------------------------------ device certificates

    async def renewal_state(self, device_id: str, serial: str) -> RenewalState:
        return await self._db.run(certs.renewal_state, device_id, serial)

    async def record_renewal(self, cert: IssuedCert) -> bool:
        """Record a renewed certificate; False if the device was revoked meanwhile."""
        return await self._db.run(certs.record_renewal, cert)

    async def revoke_device(self, device_id: str, *, now: float, by: str) -> Device | None:
        """Mark a device revoked by `by` and offline (idempotent: the first revocation's
        time and author stay); None if unknown."""
        return await self._db.run(certs.revoke_device, device_id, now, by)

    async def record_throwaway_cert(self, cert: IssuedCert) -> None:
        """Record a certificate the hub issued for a device's CN among the device's."""
        await self._db.run(certs.record_throwaway, cert)

    async def device_certs(self, device_id: str) -> list[IssuedCert]:
        return await self._db.run(certs.device_certs, device_id)

    def revoked_certs_sync(self) -> list[RevokedCert]:
        """Every certificate of every revoked device (blocking: for the CRL writer's thread)."""
        return self._db.run_sync(certs.revoked_certs)

    def held_certs_sync(self, now: float) -> list[RevokedCert]:
        """Every certificate of every device held off at `now` (blocking, as above)."""
        return self._db.run_sync(certs.held_certs, now)

    async def hold_device(self, device_id: str, *, now: float, until: float) -> bool:
        """Hold a device off until `until` (marked offline); False if unknown or revoked."""
        return await self._db.run(certs.hold_device, device_id, now, until)

    async def holds(self, now: float) -> dict[str, float]:
        """Devices held off at `now`: when each hold ends."""
        return await self._db.run(certs.holds, now)

    # ------------------------------------------------------------ audit

    async def audit(self, entry: AuditEntry) -> None:
        await self._db.run(audit.record, entry)

    async def audit_log(self, *, before: int | None, limit: int) -> list[AuditEntry]:
        return await self._db.run(lambda db: audit.newest_first(db, before=before, limit=limit))

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

    async def create_tasks(self, new: Sequence[NewTask], *, now: float) -> None:
        await self._db.run(tasks.create, list(new), now)

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

    async def task_updates(
        self, device_id: str, updates: Sequence[Any], *, now: float, settings: TaskSettings
    ) -> list[tuple[str, str]]:
        return await self._db.run(leases.update, device_id, list(updates), now, settings)

    async def task_updates_many(
        self, reports: Sequence[tuple[str, Sequence[Any]]], *, now: float, settings: TaskSettings
    ) -> list[list[tuple[str, str]]]:
        """`task_updates` of several devices in one (soft) transaction."""
        return await self._db.run(leases.update_many, list(reports), now, settings)

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

    async def mark_policy_published(self, published: list[tuple[str, int]]) -> None:
        """(device id, version) pairs sent."""
        await self._db.run(policies.mark_published, published)

    async def device_policy(self, device_id: str) -> Effective | None:
        return await self._db.run(policies.effective, device_id)

    async def policy_drift(self) -> int:
        return await self._db.run(policies.drift)

    # ------------------------------------------------------------ model statistics

    async def model_distributions(
        self, *, since: float
    ) -> dict[tuple[str, str], dict[str, modelstats.Distribution]]:
        """Per (model, version): each unrevoked device's inferences from `since` on."""
        return await self._db.run(modelstats.distributions, since)

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

    # ------------------------------------------------------------ models and roll-outs

    async def add_model(self, model: StoredModel) -> bool:
        """Store an uploaded model; False if its name and version exist."""
        return await self._db.run(catalog.add_model, model)

    async def put_model_file(self, name: str, version: str, content: bytes) -> None:
        await self._db.run(modelfiles.put_model_file, name, version, content)

    async def model_file(self, name: str, version: str) -> bytes | None:
        """A model's file as kept in the database (replicas only), or None."""
        return await self._db.run(modelfiles.get_model_file, name, version)

    async def model(self, name: str, version: str) -> StoredModel | None:
        return await self._db.run(catalog.get_model, name, version)

    async def models(self) -> list[StoredModel]:
        return await self._db.run(catalog.list_models)

    async def create_rollout(
        self,
        *,
        name: str,
        version: str,
        selector: dict[str, str],
        canary_share: float,
        by: str,
        now: float,
        mode: str = "staged",
        criteria: dict[str, float] | None = None,
    ) -> Rollout:
        """Raises `RolloutRefusedError` naming why it cannot start."""
        return await self._db.run(
            lambda db: rollouts.create_rollout(
                db,
                name=name,
                version=version,
                selector=selector,
                canary_share=canary_share,
                by=by,
                now=now,
                mode=mode,
                criteria=criteria,
            )
        )

    async def rollout(self, rollout_id: int) -> Rollout | None:
        return await self._db.run(rollouts.get_rollout, rollout_id)

    async def rollouts(self) -> list[Rollout]:
        return await self._db.run(rollouts.list_rollouts)

    async def reconcile_inventory(
        self, inventories: list[tuple[str, list[tuple[str, str]]]], *, now: float
    ) -> list[Advanced]:
        """See `rollouts.reconcile_inventory`: (device id, what it serves) pairs."""
        return await self._db.run(rollouts.reconcile_inventory, inventories, now)

    async def record_model_state(
        self,
        device_id: str,
        name: str,
        version: str,
        state: str,
        detail: str,
        *,
        now: float,
        final: bool = True,
    ) -> list[Advanced]:
        return await self._db.run(
            lambda db: rollouts.record_state(
                db, device_id, name, version, state, detail, now, final=final
            )
        )

    async def desired_releases(self, device_id: str) -> list[tuple[bytes, bytes]]:
        return await self._db.run(rollouts.desired_releases, device_id)

    async def desired_releases_of(
        self, device_ids: list[str]
    ) -> dict[str, list[tuple[bytes, bytes]]]:
        return await self._db.run(rollouts.desired_releases_of, device_ids)

    async def halt_rollout(self, rollout_id: int, reason: str, *, now: float) -> Advanced | None:
        """Halt a roll-out in progress; None if there is no such roll-out."""
        return await self._db.run(rollouts.halt, rollout_id, reason, now)

    async def drop_from_rollouts(
        self, device_id: str, reason: str, *, now: float
    ) -> list[Advanced]:
        """Take a device out of every roll-out in progress, failing its open rows with `reason`."""
        return await self._db.run(rollouts.withdraw_device, device_id, reason, now)
