"""What several modules show: a device as the registry knows it (the fleet routes, the
dashboard's snapshots and the CLI's device list all answer with it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from hub.store import Device, ListedDevice
from outpost.schema import Struct

# JSON text as stored, which the encoder copies into an answer as it is. Typed to return
# Any: it stands for the value the field declares (and msgspec.Raw itself, not a function
# around it: a page calls it five times a row).
_stored: Callable[[str], Any] = msgspec.Raw


class Certificate(Struct, frozen=True):
    """A device certificate's identity and validity window."""

    serial: Annotated[str | None, Meta(description="serial number, hex")]
    not_before: Annotated[float | None, Meta(description="start of validity, epoch seconds")]
    not_after: Annotated[float | None, Meta(description="end of validity, epoch seconds")]


class DeviceOut(Struct, frozen=True):
    """A device as the registry knows it."""

    id: Annotated[str, Meta(description="device id")]
    name: Annotated[
        str, Meta(description="its name, unique in the fleet (usable wherever the id is)")
    ]
    profile: Annotated[str, Meta(description="device profile")]
    labels: Annotated[dict[str, str], Meta(description="labels (site, group, ...)")]
    online: Annotated[bool, Meta(description="connected now (never, once revoked)")]
    last_seen: Annotated[float | None, Meta(description="last message, epoch seconds")]
    last_heartbeat: Annotated[float | None, Meta(description="last heartbeat, epoch seconds")]
    heartbeat_interval: Annotated[float | None, Meta(description="seconds between its heartbeats")]
    agent_version: Annotated[str | None, Meta(description="version of its agent")]
    capabilities: Annotated[dict[str, Any], Meta(description="cores, memory, disk, accelerator")]
    load: Annotated[dict[str, Any], Meta(description="CPU, memory, disk, RSS, temperature")]
    store: Annotated[
        dict[str, Any] | None,
        Meta(
            description="its local store: fill per stream, refusals, roll-ups, evictions, "
            "write wear"
        ),
    ]
    enrolled_at: Annotated[float | None, Meta(description="enrollment time, epoch seconds")]
    certificate: Annotated[Certificate, Meta(description="its certificate")]
    runtime: Annotated[str | None, Meta(description="its inference runtime and version")]
    models: Annotated[
        list[dict[str, Any]],
        Meta(
            description="installed models: name, active version, sha256, state (ready or "
            "failed), error"
        ),
    ]
    task_slots: Annotated[int, Meta(description="tasks it runs at once (0: it takes none)")]
    task_latency_ms: Annotated[float | None, Meta(description="its recent task latency, averaged")]
    revoked: Annotated[
        bool,
        Meta(description="its certificates are revoked: it can no longer connect or renew (final)"),
    ]
    revoked_at: Annotated[
        float | None, Meta(description="when it was first revoked, epoch seconds")
    ]
    revoked_by: Annotated[
        str | None,
        Meta(
            description="who revoked it: the API token's subject, or `cli:<OS user>` for the "
            "`outpost-hub device revoke` command (null if not revoked, or revoked before the "
            "hub recorded who)"
        ),
    ]
    bundle_at: Annotated[
        float | None,
        Meta(
            description="when its newest courier bundle imported was made, epoch seconds "
            "(last seen via bundle; null: never synced by bundle)"
        ),
    ] = None

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(
            id=d.device_id,
            name=d.name or d.device_id,
            profile=d.profile,
            labels=d.labels,
            online=d.state == "online",
            last_seen=d.last_seen,
            last_heartbeat=d.last_heartbeat,
            heartbeat_interval=d.heartbeat_interval,
            agent_version=d.agent_version,
            capabilities=d.capabilities,
            load=d.load,
            store=d.store,
            enrolled_at=d.enrolled_at,
            certificate=Certificate(d.cert_serial, d.cert_not_before, d.cert_not_after),
            runtime=d.runtime,
            models=d.models,
            task_slots=d.task_slots,
            task_latency_ms=d.task_latency_ms,
            revoked=d.revoked_at is not None,
            revoked_at=d.revoked_at,
            revoked_by=d.revoked_by,
            bundle_at=d.bundle_at,
        )

    @classmethod
    def listed(cls, row: ListedDevice) -> DeviceOut:
        """The answer for a listed device, the JSON it was stored with spliced in as it is:
        the fields that text fills hold a `msgspec.Raw`, for the encoder only (the same
        JSON as `of` gives, with no dict built and encoded again for each)."""
        (
            device_id,
            name,
            profile,
            labels,
            online,
            last_seen,
            last_heartbeat,
            heartbeat_interval,
            agent_version,
            capabilities,
            load,
            store,
            enrolled_at,
            cert_serial,
            cert_not_before,
            cert_not_after,
            runtime,
            models,
            task_slots,
            task_latency_ms,
            revoked_at,
            revoked_by,
            bundle_at,
        ) = row
        # By position, in the order declared above: a page makes one per row, and a call
        # by keyword costs twice as much (tests compare the two ways field by field).
        return cls(
            device_id,
            name or device_id,
            profile,
            _stored(labels),
            bool(online) and revoked_at is None,
            last_seen,
            last_heartbeat,
            heartbeat_interval,
            agent_version,
            _stored(capabilities or "{}"),
            _stored(load or "{}"),
            _stored(store) if store else None,
            enrolled_at,
            Certificate(cert_serial, cert_not_before, cert_not_after),
            runtime,
            _stored(models or "[]"),
            task_slots,
            task_latency_ms,
            revoked_at is not None,
            revoked_at,
            revoked_by,
            bundle_at,
        )
