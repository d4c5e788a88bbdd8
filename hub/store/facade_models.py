"""The store's units of work for models: the catalogue, model files, and roll-outs with
what each device should run and what it reports.

A part of `HubStore` (hub/store/__init__.py), apart so that no file of the facade runs
past a few hundred lines; each method runs its SQL module's function on the engine.
"""

from __future__ import annotations

from hub.store import catalog, modelfiles, offers, rollouts
from hub.store.catalog import StoredModel
from hub.store.engine import Engine
from hub.store.rollouts import Advanced, Rollout


class ModelStore:
    """Models and roll-outs, awaited from the event loop."""

    _db: Engine

    # ------------------------------------------------------------ models and roll-outs

    async def add_model(self, model: StoredModel) -> bool:
        """Store an uploaded model; False if its name and version exist."""
        return await self._db.run(catalog.add_model, model)

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

    async def offers_of(
        self, device_ids: list[str], *, now: float, always: frozenset[str] = frozenset()
    ) -> dict[str, offers.Offer]:
        """What each device should run and shadow, numbered for the seal of those that
        check one; `always`: numbered even with nothing to offer (hub/store/offers.py)."""
        return await self._db.run(offers.offers_of, device_ids, now, always)

    async def halt_rollout(self, rollout_id: int, reason: str, *, now: float) -> Advanced | None:
        """Halt a roll-out in progress; None if there is no such roll-out."""
        return await self._db.run(rollouts.halt, rollout_id, reason, now)

    async def drop_from_rollouts(
        self, device_id: str, reason: str, *, now: float
    ) -> list[Advanced]:
        """Take a device out of every roll-out in progress, failing its open rows with `reason`."""
        return await self._db.run(rollouts.withdraw_device, device_id, reason, now)
