"""The input shapes of the models the hub holds, for refusing a task whose input fits no
version it could run on: such a task was queued (202), sent, and failed on its device
with `bad_shape`, after its wait in the queue.

Only what the hub knows is checked: the manifests of uploaded models. A task that may
run on a version the hub holds no manifest for (one installed on a device by hand) is
accepted as before, to be checked there. Kept in memory like `FleetModels`, and read
again before a refusal unless read a moment ago (`FRESH_S`)."""

from __future__ import annotations

import time
from typing import Final

from hub.store import HubStore
from hub.tasks.fleetmodels import FleetModels
from outpost import tensorshape

RECHECK_S: Final = 1.0
FRESH_S: Final = 0.1

Shape = tuple[int, ...]


class InputShapes:
    """Each uploaded model version's input shape, by model name and version."""

    def __init__(self, store: HubStore, fleet: FleetModels) -> None:
        self._store = store
        self._fleet = fleet
        self._shapes: dict[str, dict[str, Shape]] = {}
        self._read_at = float("-inf")

    async def refusal(self, model: str, version: str, found: tensorshape.Found) -> str | None:
        """Why an input of shape `found` (or of its bytes) fits no version a task for
        `model` (at `version`, if given) may run on, or None if it fits one or one is not
        known here."""
        if time.monotonic() - self._read_at >= RECHECK_S:
            await self._read()
        if self._refusal(model, version, found) is None:
            return None
        # Before a refusal, a view older than `FRESH_S` is read again (a refused flood
        # costs a read each `FRESH_S`, not two a request).
        if time.monotonic() - self._read_at >= FRESH_S:
            await self._read()
        await self._fleet.refresh(older_than_s=FRESH_S)
        return self._refusal(model, version, found)

    def _refusal(self, model: str, version: str, found: tensorshape.Found) -> str | None:
        held = self._shapes.get(model, {})
        versions = {version} if version else set(held) | self._fleet.versions(model)
        if not versions or not versions <= held.keys():
            return None  # a version with no manifest here: its device checks
        wanted = sorted({held[v] for v in versions})
        if any(tensorshape.fits(found, want) for want in wanted):
            return None
        if len(wanted) == 1:
            return tensorshape.mismatch(found, wanted[0])
        each = "; ".join(
            f"{list(want)} ({', '.join(sorted(v for v in versions if held[v] == want))})"
            for want in wanted
        )
        return f"{tensorshape.described(found)} matches none of {model}'s inputs: {each}"

    async def _read(self) -> None:
        shapes: dict[str, dict[str, Shape]] = {}
        for stored in await self._store.models():
            spec = stored.manifest.get("input")
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if isinstance(shape, list) and all(type(n) is int for n in shape):
                shapes.setdefault(stored.name, {})[stored.version] = tuple(shape)
        self._shapes = shapes
        self._read_at = time.monotonic()
