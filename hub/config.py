"""The hub's settings: `[hub]` in `hub.toml` of its data folder, overridden by flags."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from hub.dburl import DatabaseUrlError, is_postgres, sqlite_path
from hub.sinks.config import SinkConfig
from outpost import logs, schema
from outpost.schema import FINITE, INT64_MAX, Struct
from outpost.settings import check_log_level, parse_broker_url
from outpost.wire.contract import Encoding, all_encodings

SECTION = "hub"


_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")

# Room in an assignment message for everything but the input (ids, model, envelope).
TASK_ENVELOPE_BYTES = 4096


class HubConfig(Struct, frozen=True):
    """Every hub setting, with its default and what it is for."""

    broker: Annotated[
        str,
        Meta(
            max_length=256,
            description="external broker as mqtts://HOST:PORT; empty runs the managed Mosquitto",
        ),
    ] = ""
    mqtt_host: Annotated[
        str,
        Meta(
            max_length=255,
            description="address the managed Mosquitto listens on (loopback by default)",
        ),
    ] = "127.0.0.1"
    mqtt_port: Annotated[int, Meta(ge=1, le=65535, description="port of the managed Mosquitto")] = (
        8883
    )
    broker_public_url: Annotated[
        str,
        Meta(
            max_length=256,
            description="broker address given to devices at enrollment; empty derives it from the "
            "listener",
        ),
    ] = ""
    broker_crl_path: Annotated[
        str,
        Meta(
            max_length=4096,
            description="external broker: also write the CRL to this absolute path, where the "
            "broker "
            "reads it; empty: only into the data folder's broker/crl.pem",
        ),
    ] = ""
    broker_reload_command: Annotated[
        str,
        Meta(
            max_length=4096,
            description="external broker: command run (without a shell) after each CRL write so "
            "that "
            "the broker re-reads it, e.g. `systemctl reload mosquitto`; empty: none",
        ),
    ] = ""
    mosquitto: Annotated[str, Meta(max_length=4096, description="Mosquitto program to run")] = (
        "mosquitto"
    )
    web_host: Annotated[
        str, Meta(max_length=255, description="address of the HTTPS endpoint (loopback by default)")
    ] = "127.0.0.1"
    web_port: Annotated[int, Meta(ge=1, le=65535, description="port of the HTTPS endpoint")] = 8443
    public_url: Annotated[
        str,
        Meta(
            max_length=256,
            description="hub URL written into enrollment tokens; empty derives it from "
            "web_host/web_port",
        ),
    ] = ""
    device_cert_days: Annotated[
        float,
        Meta(
            ge=1e-4,
            le=3650,
            description="lifetime of device certificates, in days (devices renew at two thirds of "
            "it)",
        ),
    ] = 90.0
    device_cert_grace_days: Annotated[
        float,
        Meta(
            ge=0,
            le=3650,
            description="how long after its certificate expired a device may still renew it with "
            "its "
            "old key, in days; later it needs a new bootstrap token",
        ),
    ] = 30.0
    enroll_token_ttl: Annotated[
        float,
        Meta(ge=1, le=30 * 86400, description="default lifetime of a bootstrap token, in seconds"),
    ] = 3600.0
    offline_after_heartbeats: Annotated[
        float,
        Meta(
            ge=1.5,
            le=100,
            description="mark a device offline when no heartbeat came for this many of its "
            "intervals",
        ),
    ] = 3.0
    broker_log_max_bytes: Annotated[
        int,
        Meta(
            ge=64 << 10,
            le=INT64_MAX,
            description="the managed Mosquitto's log is moved aside (one old copy kept) past this "
            "size",
        ),
    ] = 16 << 20
    max_payload_bytes: Annotated[
        int, Meta(ge=1024, le=16 << 20, description="largest MQTT payload accepted from a device")
    ] = 256 * 1024
    compression: Annotated[
        list[Encoding],
        Meta(
            max_length=2,
            description="compressed upload batches accepted from devices that offer them, "
            "negotiated per connection (zstd-dict1: zstd with Outpost's dictionary; zstd); "
            "[] takes plain batches only",
        ),
    ] = msgspec.field(default_factory=all_encodings)
    device_msgs_per_s: Annotated[
        float,
        Meta(
            ge=1,
            le=FINITE,
            description="sustained MQTT messages per second taken from one device; the rest "
            "dropped",
        ),
    ] = 1000.0
    device_msgs_burst: Annotated[
        int, Meta(ge=1, le=1_000_000, description="MQTT messages one device may send in a burst")
    ] = 2000
    device_bytes_per_s: Annotated[
        int,
        Meta(
            ge=1024,
            le=INT64_MAX,
            description="sustained MQTT payload bytes per second taken from one device",
        ),
    ] = 8 << 20
    device_queue: Annotated[
        int,
        Meta(
            ge=10,
            le=INT64_MAX,
            description="messages of one device waiting for the ingest, at most",
        ),
    ] = 2000
    device_hold_drops: Annotated[
        int,
        Meta(
            ge=0,
            le=INT64_MAX,
            description="messages of one device dropped over its budget within a minute that get "
            "it "
            "held off (its session ended, its certificates on hold in the CRL); 0: never",
        ),
    ] = 10_000
    device_hold_s: Annotated[
        float,
        Meta(ge=1, le=86_400, description="how long a device that flooded the hub is held off"),
    ] = 600.0
    web_max_conns_per_address: Annotated[
        int,
        Meta(
            ge=1,
            le=INT64_MAX,
            description="HTTPS connections one client address may hold open at once",
        ),
    ] = 64
    web_header_timeout_s: Annotated[
        float,
        Meta(
            ge=0.5,
            le=3600,
            description="a client must finish its TLS handshake, and then send a request, within "
            "this",
        ),
    ] = 15.0
    api_max_body_bytes: Annotated[
        int, Meta(ge=1024, le=16 << 20, description="largest request body the web API accepts")
    ] = 64 * 1024
    api_rate_per_s: Annotated[
        float,
        Meta(
            ge=0.1,
            le=FINITE,
            description="sustained API requests per second allowed to each token subject",
        ),
    ] = 20.0
    api_rate_burst: Annotated[
        int, Meta(ge=1, le=100_000, description="API requests a token subject may make in a burst")
    ] = 40
    auth_failures_per_min: Annotated[
        int,
        Meta(
            ge=1,
            le=INT64_MAX,
            description="failed authentications per minute from one address before 429",
        ),
    ] = 30
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

    def _check_external_broker_settings(self) -> None:
        for key in ("broker_crl_path", "broker_reload_command"):
            if getattr(self, key) and not self.broker:
                raise schema.SchemaError(
                    key,
                    "is for an external broker: set broker (mqtts://HOST:PORT) too; the "
                    "managed Mosquitto reads the hub's CRL and is reloaded by the hub",
                )
        if self.broker_crl_path and not Path(self.broker_crl_path).is_absolute():
            raise schema.SchemaError(
                "broker_crl_path", f"{self.broker_crl_path!r}: give an absolute path"
            )
        if self.broker_reload_command:  # split now, so that a bad one fails at load
            _split_command(self.broker_reload_command, "broker_reload_command")

    @property
    def reload_argv(self) -> list[str]:
        """`broker_reload_command` split as a shell would, to run it without one."""
        if not self.broker_reload_command:
            return []
        return _split_command(self.broker_reload_command, "hub.broker_reload_command")

    def database(self, default: Path) -> Path | str:
        """What the store opens: `db_url`, else the data folder's SQLite file `default`."""
        if not self.db_url:
            return default
        return self.db_url if is_postgres(self.db_url) else sqlite_path(self.db_url)

    @property
    def managed_broker(self) -> bool:
        return not self.broker

    @property
    def broker_address(self) -> tuple[str, int]:
        """Where the hub itself connects."""
        if self.broker:
            return parse_broker_url(self.broker, "hub.broker")
        return self.mqtt_host, self.mqtt_port

    @property
    def device_broker_url(self) -> str:
        """The broker URL handed to devices at enrollment."""
        if self.broker_public_url:
            return self.broker_public_url
        host, port = self.broker_address
        return f"mqtts://{_url_host(host)}:{port}"

    @property
    def hub_url(self) -> str:
        """The hub URL written into bootstrap tokens."""
        return self.public_url or f"https://{_url_host(self.web_host)}:{self.web_port}"


def check_replica_id(replica_id: str, where: str) -> None:
    """Refuse a replica id that is not 1-32 letters, digits and - (it goes into a CN)."""
    if not _REPLICA_ID.fullmatch(replica_id):
        raise schema.SchemaError(where, f"{replica_id!r}: use letters, digits and - only")


def _split_command(command: str, where: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:  # an unclosed quote, a trailing backslash
        raise schema.SchemaError(where, f"{command!r}: {exc}") from None
    if not argv:
        raise schema.SchemaError(where, "names no program")
    return argv


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
