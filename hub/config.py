"""The hub's settings: `[hub]` in `hub.toml` of its data folder, overridden by flags."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from hub.store.engine import DatabaseUrlError, is_postgres, sqlite_path
from outpost import logs, schema
from outpost.settings import check_log_level, parse_broker_url

SECTION = "hub"


_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")

# Room in an assignment message for everything but the input (ids, model, envelope).
TASK_ENVELOPE_BYTES = 4096


@dataclass(frozen=True)
class HubConfig:
    """Every hub setting, with its default and what it is for."""

    broker: str = schema.setting(
        "",
        help="external broker as mqtts://HOST:PORT; empty runs the managed Mosquitto",
        max_len=256,
    )
    mqtt_host: str = schema.setting(
        "127.0.0.1",
        help="address the managed Mosquitto listens on (loopback by default)",
        max_len=255,
    )
    mqtt_port: int = schema.setting(8883, help="port of the managed Mosquitto", min=1, max=65535)
    broker_public_url: str = schema.setting(
        "",
        help="broker address given to devices at enrollment; empty derives it from the listener",
        max_len=256,
    )
    broker_crl_path: str = schema.setting(
        "",
        help="external broker: also write the CRL to this absolute path, where the broker "
        "reads it; empty: only into the data folder's broker/crl.pem",
        max_len=4096,
    )
    broker_reload_command: str = schema.setting(
        "",
        help="external broker: command run (without a shell) after each CRL write so that "
        "the broker re-reads it, e.g. `systemctl reload mosquitto`; empty: none",
        max_len=4096,
    )
    mosquitto: str = schema.setting("mosquitto", help="Mosquitto program to run", max_len=4096)
    web_host: str = schema.setting(
        "127.0.0.1", help="address of the HTTPS endpoint (loopback by default)", max_len=255
    )
    web_port: int = schema.setting(8443, help="port of the HTTPS endpoint", min=1, max=65535)
    public_url: str = schema.setting(
        "",
        help="hub URL written into enrollment tokens; empty derives it from web_host/web_port",
        max_len=256,
    )
    device_cert_days: float = schema.setting(
        90.0,
        help="lifetime of device certificates, in days (devices renew at two thirds of it)",
        min=1e-4,  # about 9 s: lets tests watch renewals; real fleets want weeks
        max=3650,
    )
    device_cert_grace_days: float = schema.setting(
        30.0,
        help="how long after its certificate expired a device may still renew it with its "
        "old key, in days; later it needs a new bootstrap token",
        min=0,
        max=3650,
    )
    enroll_token_ttl: float = schema.setting(
        3600.0, help="default lifetime of a bootstrap token, in seconds", min=1, max=30 * 86400
    )
    offline_after_heartbeats: float = schema.setting(
        3.0,
        help="mark a device offline when no heartbeat came for this many of its intervals",
        min=1.5,
        max=100,
    )
    broker_log_max_bytes: int = schema.setting(
        16 << 20,
        help="the managed Mosquitto's log is moved aside (one old copy kept) past this size",
        min=64 << 10,
    )
    max_payload_bytes: int = schema.setting(
        256 * 1024, help="largest MQTT payload accepted from a device", min=1024, max=16 << 20
    )
    device_msgs_per_s: float = schema.setting(
        1000.0,
        help="sustained MQTT messages per second taken from one device; the rest dropped",
        min=1,
    )
    device_msgs_burst: int = schema.setting(
        2000, help="MQTT messages one device may send in a burst", min=1, max=1_000_000
    )
    device_bytes_per_s: int = schema.setting(
        8 << 20, help="sustained MQTT payload bytes per second taken from one device", min=1024
    )
    device_queue: int = schema.setting(
        2000, help="messages of one device waiting for the ingest, at most", min=10
    )
    device_hold_drops: int = schema.setting(
        10_000,
        help="messages of one device dropped over its budget within a minute that get it "
        "held off (its session ended, its certificates on hold in the CRL); 0: never",
        min=0,
    )
    device_hold_s: float = schema.setting(
        600.0, help="how long a device that flooded the hub is held off", min=1, max=86_400
    )
    web_max_conns_per_address: int = schema.setting(
        64, help="HTTPS connections one client address may hold open at once", min=1
    )
    web_header_timeout_s: float = schema.setting(
        15.0,
        help="a client must finish its TLS handshake, and then send a request, within this",
        min=0.5,
        max=3600,
    )
    api_max_body_bytes: int = schema.setting(
        64 * 1024, help="largest request body the web API accepts", min=1024, max=16 << 20
    )
    api_rate_per_s: float = schema.setting(
        20.0, help="sustained API requests per second allowed to each token subject", min=0.1
    )
    api_rate_burst: int = schema.setting(
        40, help="API requests a token subject may make in a burst", min=1, max=100_000
    )
    auth_failures_per_min: int = schema.setting(
        30, help="failed authentications per minute from one address before 429", min=1
    )
    db_url: str = schema.setting(
        "",
        help="the hub's database: empty keeps hub.db (SQLite) in the data folder; "
        "postgresql://USER@HOST:PORT/DATABASE for replicas (a password goes in PGPASSWORD "
        "or ~/.pgpass, not here)",
        max_len=1024,
    )
    db_pool_size: int = schema.setting(
        4, help="PostgreSQL connections (and worker threads) of this replica", min=1, max=64
    )
    replica_id: str = schema.setting(
        "",
        help="this replica's name, unique among the hubs sharing a database and broker "
        "(letters, digits, -); empty: the only hub",
        max_len=32,
    )
    elect_leader: bool = schema.setting(
        True,
        help="replicas elect one to run the allocation passes and sweeps; false: every "
        "replica runs them (the database keeps that correct, at the cost of repeated work; "
        "the tests use it to prove so)",
    )
    db_busy_timeout_ms: int = schema.setting(
        5000,
        help="how long a database write waits for a lock held elsewhere before it fails, ms",
        min=1,
        max=600_000,
    )
    task_accept_timeout_s: float = schema.setting(
        10.0,
        help="a device must accept or reject an assignment within this long, or it moves on",
        min=0.1,
        max=3600,
    )
    task_max_attempts: int = schema.setting(
        3, help="assignments of one task (rejections and lapsed leases) before it fails", min=1
    )
    task_prefetch: int = schema.setting(
        2,
        help="tasks a device may hold beyond those it runs at once (work given ahead)",
        min=0,
        max=1000,
    )
    task_max_slots: int = schema.setting(
        16,
        help="task slots a device is believed to have at most, whatever its hello claims",
        min=1,
        max=1024,
    )
    task_default_lease_s: float = schema.setting(
        60.0, help="lease of a task that names none, seconds", min=0.1, max=7 * 86400
    )
    task_default_deadline_s: float = schema.setting(
        600.0, help="deadline of a task that names none, seconds from submission", min=1
    )
    task_max_batch: int = schema.setting(
        1000, help="tasks one POST /api/v1/tasks may submit", min=1, max=100_000
    )
    task_max_input_bytes: int = schema.setting(
        128 * 1024,
        help="largest task input, bytes (msgpack); below max_payload_bytes",
        min=64,
        max=4 << 20,
    )
    api_max_task_body_bytes: int = schema.setting(
        8 << 20, help="largest request body of POST /api/v1/tasks", min=1024, max=256 << 20
    )
    log_level: str = schema.setting("info", help="debug, info, warning or error", max_len=16)
    log_format: logs.LogFormat = schema.setting(
        "auto", help="json (one object per line, for journald), text, or auto (text on a terminal)"
    )

    def __post_init__(self) -> None:
        check_log_level(self.log_level, "hub.log_level")
        if self.broker:
            parse_broker_url(self.broker, "hub.broker")
        if self.replica_id:
            check_replica_id(self.replica_id, "hub.replica_id")
        self._check_external_broker_settings()
        if self.replica_id and not self.broker:
            raise schema.SchemaError(
                "hub.replica_id",
                "replicas share one external broker: set broker (--broker mqtts://HOST:PORT)",
            )
        if self.replica_id and not is_postgres(self.db_url):
            raise schema.SchemaError(
                "hub.replica_id",
                "replicas share one PostgreSQL database: set db_url (--db) to a "
                "postgresql:// URL too",
            )
        if self.db_url and not is_postgres(self.db_url):
            try:
                sqlite_path(self.db_url)
            except DatabaseUrlError as exc:
                raise schema.SchemaError("hub.db_url", str(exc)) from None
        if self.task_max_input_bytes + TASK_ENVELOPE_BYTES > self.max_payload_bytes:
            raise schema.SchemaError(
                "hub.task_max_input_bytes",
                f"must leave {TASK_ENVELOPE_BYTES} bytes below max_payload_bytes "
                f"({self.max_payload_bytes}): an assignment travels in one message",
            )

    def _check_external_broker_settings(self) -> None:
        for key in ("broker_crl_path", "broker_reload_command"):
            if getattr(self, key) and not self.broker:
                raise schema.SchemaError(
                    f"hub.{key}",
                    "is for an external broker: set broker (mqtts://HOST:PORT) too; the "
                    "managed Mosquitto reads the hub's CRL and is reloaded by the hub",
                )
        if self.broker_crl_path and not Path(self.broker_crl_path).is_absolute():
            raise schema.SchemaError(
                "hub.broker_crl_path", f"{self.broker_crl_path!r}: give an absolute path"
            )
        if self.broker_reload_command:  # split now, so that a bad one fails at load
            _split_command(self.broker_reload_command, "hub.broker_reload_command")

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
