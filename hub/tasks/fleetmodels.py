"""The models the fleet has, for refusing a task no device could ever run (a misspelled
model name used to wait out its deadline in silence).

Kept in memory and read again at most once a `RECHECK_S`, and at once before a refusal:
a submit for a known model costs nothing, and a model a device reported a moment ago is
never refused for a stale view."""

from __future__ import annotations

import time
from typing import Final

from hub.store import HubStore

RECHECK_S: Final = 1.0


class FleetModels:
    """Which (model, version) pairs some unrevoked device reports."""

    def __init__(self, store: HubStore) -> None:
        self._store = store
        self._known: set[tuple[str, str]] = set()
        self._read_at = float("-inf")

    async def has(self, model: str, version: str = "") -> bool:
        """Whether some device reports `model` (at `version`, if given)."""
        if time.monotonic() - self._read_at < RECHECK_S and self._holds(model, version):
            return True
        await self.refresh()
        return self._holds(model, version)

    async def names(self) -> list[str]:
        """The models the fleet has, with their versions: `name (1.0.0, 1.1.0)`."""
        versions: dict[str, list[str]] = {}
        for name, version in sorted(self._known):
            versions.setdefault(name, []).append(version)
        return [f"{name} ({', '.join(v)})" for name, v in versions.items()]

    def versions(self, model: str) -> set[str]:
        """The versions of `model` the fleet had when last read (`refresh`)."""
        return {v for name, v in self._known if name == model}

    def _holds(self, model: str, version: str) -> bool:
        if version:
            return (model, version) in self._known
        return any(name == model for name, _ in self._known)

    async def refresh(self, older_than_s: float = 0.0) -> None:
        """Read the fleet's models again, unless read less than `older_than_s` ago."""
        if older_than_s and time.monotonic() - self._read_at < older_than_s:
            return
        self._known = await self._store.fleet_models()
        self._read_at = time.monotonic()
