"""The store's units of work for the fleet's identity: enrollment and API tokens, the
device registry and presence, device certificates and holds, and the audit log.

A part of `HubStore` (hub/store/__init__.py), apart so that no file of the facade runs
past a few hundred lines; each method runs its SQL module's function on the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.store import audit, certs, devices, events, leases, tokens
from hub.store.audit import AuditEntry
from hub.store.candidates import Candidate
from hub.store.certs import IssuedCert, RenewalState, RevokedCert
from hub.store.devices import (
    Device,
    ListedDevice,
    PresenceEvent,
)
from hub.store.engine import Engine
from hub.store.events import DeviceEvent
from hub.store.leases import Known
from hub.store.leases import Settings as TaskSettings
from hub.store.tokens import ApiTokenRecord


class FleetStore:
    """Tokens, devices, certificates and the audit log, awaited from the event loop."""

    _db: Engine

    # ------------------------------------------------------------ bootstrap tokens

    async def add_enroll_token(
        self, jti: str, *, now: float, expires_at: float, labels: dict[str, str]
    ) -> None:
        await self._db.run(tokens.add_enroll_token, jti, now, expires_at, labels)

    def add_enroll_token_sync(
        self, jti: str, *, now: float, expires_at: float, labels: dict[str, str]
    ) -> None:
        self._db.run_sync(tokens.add_enroll_token, jti, now, expires_at, labels)

    async def consume_enroll_token(
        self, jti: str, *, now: float, key_sha256: str, device_id: str
    ) -> tokens.Consumed:
        """Use the token up for this key and device (or find the device it enrolled for
        the same key before), or raise `TokenRefusedError`."""
        return await self._db.run(tokens.consume_enroll_token, jti, now, key_sha256, device_id)

    async def revoke_enroll_token(self, jti: str, *, now: float) -> str:
        """Revoke a bootstrap token: "revoked", "already revoked" or "unknown"."""
        return await self._db.run(tokens.revoke_enroll_token, jti, now)

    def revoke_enroll_token_sync(self, jti: str, *, now: float) -> str:
        return self._db.run_sync(tokens.revoke_enroll_token, jti, now)

    async def keep_enroll_answer(self, jti: str, certificate_pem: str) -> None:
        """Keep what the token's enrollment issued, for the same device asking again."""
        await self._db.run(tokens.keep_enroll_answer, jti, certificate_pem)

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
        max_labels: int | None = None,
    ) -> Device | None:
        """Change labels and/or the name; NameTakenError if another device has the name,
        TooManyLabelsError if it would carry over `max_labels` labels (None: no cap)."""
        return await self._db.run(devices.update_device, device_id, labels, name, now, max_labels)

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

    def revoked_certs_sync(self, now: float) -> list[RevokedCert]:
        """Every certificate of every revoked device, but those long expired at `now`
        (blocking: for the CRL writer's thread)."""
        return self._db.run_sync(certs.revoked_certs, now)

    def held_certs_sync(self, now: float) -> list[RevokedCert]:
        """Every certificate of every device held off at `now`, as above (blocking)."""
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
