"""The hub's settings: `[hub]` in `hub.toml` of its data folder, overridden by flags.

The keys are declared in sections that stack: the addresses (config_endpoints.py), the
lifetimes and traffic limits (config_limits.py), then here the database, tasks, sinks
and logging, and the rules that tie keys of different sections together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from msgspec import Meta

from hub.config_limits import LimitSettings
from hub.dburl import DatabaseUrlError, is_postgres, sqlite_path
from hub.sinks.config import SinkConfig
from outpost import logs, schema
from outpost.schema import FINITE, INT64_MAX
from outpost.settings import check_log_level, parse_broker_url

SECTION = "hub"


_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")

# Room in an assignment message for everything but the input (ids, model, envelope).
TASK_ENVELOPE_BYTES = 4096


# Sections stack as in config_limits.py: these keys come after the limits'.
class HubConfig(LimitSettings, frozen=True):
    """Every hub setting, with its default and what it is for."""

    db_url: Annotated[
        str,
        Meta(
            max_length=1024,
            description="the hub's database: empty keeps hub.db (SQLite) in the data folder; "
            "postgresql://USER@HOST:PORT/DATABASE for replicas (a password goes in PGPASSWORD "
            "or ~/.pgpass, not here)",
        ),
    ] = ""
    db_pool_size: Annotated[
        int,
        Meta(
            ge=1, le=64, description="PostgreSQL connections (and worker threads) of this replica"
        ),
    ] = 4
    replica_id: Annotated[
        str,
        Meta(
            max_length=32,
            description="this replica's name, unique among the hubs sharing a database and broker "
            "(letters, digits, -); empty: the only hub",
        ),
    ] = ""
    elect_leader: Annotated[
        bool,
        Meta(
            description="replicas elect one to run the allocation passes and sweeps; false: every "
            "replica runs them (the database keeps that correct, at the cost of repeated work; "
            "the tests use it to prove so)"
        ),
    ] = True
    db_busy_timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            le=600_000,
            description="how long a database write waits for a lock held elsewhere before it "
            "fails, ms",
        ),
    ] = 5000
    task_accept_timeout_s: Annotated[
        float,
        Meta(
            ge=0.1,
            le=3600,
            description="a device must accept or reject an assignment within this long, or it "
            "moves on",
        ),
    ] = 10.0
    task_max_attempts: Annotated[
        int,
        Meta(
            ge=1,
            le=INT64_MAX,
            description="assignments of one task (rejections and lapsed leases) before it fails",
        ),
    ] = 3
    task_prefetch: Annotated[
        int,
        Meta(
            ge=0,
            le=1000,
            description="tasks a device may hold beyond those it runs at once (work given ahead)",
        ),
    ] = 2
    task_max_slots: Annotated[
        int,
        Meta(
            ge=1,
            le=1024,
            description="task slots a device is believed to have at most, whatever its hello "
            "claims",
        ),
    ] = 16
    task_default_lease_s: Annotated[
        float, Meta(ge=0.1, le=7 * 86400, description="lease of a task that names none, seconds")
    ] = 60.0
    task_default_deadline_s: Annotated[
        float,
        Meta(
            ge=1,
            le=FINITE,
            description="deadline of a task that names none, seconds from submission",
        ),
    ] = 600.0
    task_max_batch: Annotated[
        int, Meta(ge=1, le=100_000, description="tasks one POST /api/v1/tasks may submit")
    ] = 1000
    task_max_input_bytes: Annotated[
        int,
        Meta(
            ge=64,
            le=4 << 20,
            description="largest task input, bytes (msgpack); below max_payload_bytes",
        ),
    ] = 128 * 1024
    api_max_task_body_bytes: Annotated[
        int, Meta(ge=1024, le=256 << 20, description="largest request body of POST /api/v1/tasks")
    ] = 8 << 20
    sinks: Annotated[
        list[SinkConfig],
        Meta(
            max_length=32,
            description="where the fleet's events go (`[[hub.sinks]]` tables: name, kind, url, "
            "credentials_file, types, selector, target, timeout_s; docs/sinks.md)",
        ),
    ] = []
    sink_keep_s: Annotated[
        float,
        Meta(
            ge=0,
            le=366 * 86400,
            description="seconds delivered events stay in the outbox, for `sinks replay`",
        ),
    ] = 86400.0
    sink_dead_letters_keep_s: Annotated[
        float,
        Meta(
            ge=3600,
            le=366 * 86400,
            description="seconds a sink's dead letters (events its receiver refused for "
            "good) are kept; each sink keeps its newest 10,000 at most",
        ),
    ] = 30 * 86400.0
    sink_max_lag_events: Annotated[
        int,
        Meta(
            ge=1000,
            le=1 << 40,
            description="events a sink may fall behind before the oldest are skipped for it "
            "(counted as overflowed, and alerted)",
        ),
    ] = 1_000_000
    sink_max_lag_s: Annotated[
        float,
        Meta(
            ge=60,
            le=366 * 86400,
            description="seconds a sink may fall behind before the oldest events are skipped "
            "for it (counted as overflowed, and alerted)",
        ),
    ] = 7 * 86400.0
    log_level: Annotated[str, Meta(max_length=16, description="debug, info, warning or error")] = (
        "info"
    )
    log_format: Annotated[
        logs.LogFormat,
        Meta(
            description="json (one object per line, for journald), text, or auto (text on a "
            "terminal)"
        ),
    ] = "auto"

    def __post_init__(self) -> None:
        # Paths are the key's own: schema.load puts the file and table in front.
        check_log_level(self.log_level, "log_level")
        if self.broker:
            parse_broker_url(self.broker, "broker")
        self._check_addresses()
        if self.replica_id:
            check_replica_id(self.replica_id, "replica_id")
        self._check_external_broker_settings()
        if self.replica_id and not self.broker:
            raise schema.SchemaError(
                "replica_id",
                "replicas share one external broker: set broker (--broker mqtts://HOST:PORT)",
            )
        if self.replica_id and not is_postgres(self.db_url):
            raise schema.SchemaError(
                "replica_id",
                "replicas share one PostgreSQL database: set db_url (--db) to a "
                "postgresql:// URL too",
            )
        if self.db_url and not is_postgres(self.db_url):
            try:
                sqlite_path(self.db_url)
            except DatabaseUrlError as exc:
                raise schema.SchemaError("db_url", str(exc)) from None
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise schema.SchemaError("sinks", f"two sinks share a name: {sorted(names)}")
        if self.task_max_input_bytes + TASK_ENVELOPE_BYTES > self.max_payload_bytes:
            raise schema.SchemaError(
                "task_max_input_bytes",
                f"must leave {TASK_ENVELOPE_BYTES} bytes below max_payload_bytes "
                f"({self.max_payload_bytes}): an assignment travels in one message",
            )

    def database(self, default: Path) -> Path | str:
        """What the store opens: `db_url`, else the data folder's SQLite file `default`."""
        if not self.db_url:
            return default
        return self.db_url if is_postgres(self.db_url) else sqlite_path(self.db_url)


def check_replica_id(replica_id: str, where: str) -> None:
    """Refuse a replica id that is not 1-32 letters, digits and - (it goes into a CN)."""
    if not _REPLICA_ID.fullmatch(replica_id):
        raise schema.SchemaError(where, f"{replica_id!r}: use letters, digits and - only")
