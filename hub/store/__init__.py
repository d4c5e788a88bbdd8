"""The hub's persistence: the one package that speaks SQL (SQLite now, PostgreSQL later).

The database, not memory, is the truth: every handler goes through `HubStore`, and each
method is a whole unit of work, so several hub replicas could share one database. The
SQL lives in one module per concern (devices, tokens, audit, records); the facade runs
it on the store's engine, its methods in three parts by concern (facade_fleet.py,
facade_work.py, facade_models.py) and its engine and views here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
    TooManyLabelsError,
)
from hub.store.engine import (
    Engine,
    FencedEngine,
    PublishingEngine,
    database_failed,
    open_engine,
    retries,
)
from hub.store.events import DeviceEvent
from hub.store.facade_fleet import FleetStore
from hub.store.facade_models import ModelStore
from hub.store.facade_work import WorkStore
from hub.store.leases import Assigned
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
    "TooManyLabelsError",
    "Upload",
    "UploadOutcome",
    "database_failed",
]

T = TypeVar("T")


class HubStore(FleetStore, WorkStore, ModelStore):
    """Registry, tokens, audit log, upload streams, tasks, policy, models and roll-outs,
    awaited from the event loop: the methods live in the facade_* modules, by concern."""

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

    async def run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        """The same, on a connection and thread no other unit takes (engine.py)."""
        return await self._db.run_apart(fn, *args)

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
