"""The agent's settings: `[agent]` in `agent.toml` of its data folder, overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edge.pacing import parse_windows
from outpost import logs, schema
from outpost.settings import check_log_level, parse_broker_url

SECTION = "agent"


@dataclass(frozen=True)
class StreamBounds:
    """Limits of one upload stream; 0 turns a limit off."""

    max_records: int = schema.setting(100_000, help="records kept unsent, at most", min=0)
    max_bytes: int = schema.setting(64 << 20, help="bytes kept unsent, at most", min=0)
    max_age_s: float = schema.setting(
        0.0, help="records older than this are dropped and counted as expired (0: never)", min=0
    )


def _bounds(records: int, size: int, age: float) -> StreamBounds:
    return StreamBounds(max_records=records, max_bytes=size, max_age_s=age)


@dataclass(frozen=True)
class Bounds:
    """Per-stream limits: results and events are refused when full, metrics roll up."""

    results: StreamBounds = field(
        default_factory=lambda: _bounds(100_000, 64 << 20, 0.0),
        metadata={"help": "bounds of the results stream"},
    )
    events: StreamBounds = field(
        default_factory=lambda: _bounds(50_000, 16 << 20, 0.0),
        metadata={"help": "bounds of the events stream"},
    )
    metrics: StreamBounds = field(
        default_factory=lambda: _bounds(50_000, 16 << 20, 14 * 86400.0),
        metadata={"help": "bounds of the metrics stream"},
    )


@dataclass(frozen=True)
class Sync:
    """How the agent drains its store to the hub."""

    batch_records: int = schema.setting(
        500, help="records per upload message, at most", min=1, max=1000
    )
    batch_bytes: int = schema.setting(
        64 * 1024, help="bytes per upload message, about", min=1024, max=200 * 1024
    )
    in_flight: int = schema.setting(
        4, help="upload messages sent but not acknowledged", min=1, max=64
    )
    ack_timeout_s: float = schema.setting(
        15.0, help="resend unacknowledged batches after this long", min=0.5
    )
    rate_bytes_per_s: int = schema.setting(
        0, help="upload rate cap for metered links, bytes/s (0: none)", min=0
    )
    windows: list[str] = schema.setting(
        [], help='local times to sync, e.g. ["01:00-05:00"]; empty: always'
    )


@dataclass(frozen=True)
class Inference:
    """Local inference: the runtime, back-pressure, and which results go to the hub."""

    runtime: Literal["auto", "ai-edge-litert", "tflite-runtime"] = schema.setting(
        "auto", help="interpreter package; auto: ai-edge-litert, else tflite-runtime"
    )
    queue_limit: int = schema.setting(
        16, help="requests waiting per model beyond those running; more are refused", min=0
    )
    report: Literal["all", "flagged", "none"] = schema.setting(
        "flagged",
        help="local inferences recorded as results: all, flagged (label not the model's "
        "normal one, or confidence below confidence_below) or none",
    )
    confidence_below: float = schema.setting(
        0.6, help="a confidence below this flags an inference", min=0, max=1
    )
    max_body_bytes: int = schema.setting(
        4 << 20, help="largest local API request body, bytes", min=1024, max=64 << 20
    )


@dataclass(frozen=True)
class AgentConfig:
    """Every agent setting, with its default and what it is for."""

    heartbeat_interval: float = schema.setting(
        10.0, help="seconds between heartbeats", min=0.2, max=3600
    )
    metrics_interval: float = schema.setting(
        60.0, help="seconds between the agent's own metrics records", min=0.2, max=86400
    )
    keepalive: int = schema.setting(
        30, help="MQTT keepalive, seconds: how soon the broker notices a cut link", min=5, max=3600
    )
    reconnect_max_delay: float = schema.setting(
        60.0,
        help="cap of the jittered back-off between reconnect attempts, seconds",
        min=0.5,
        max=3600,
    )
    # 10 s: a 10,000-device fleet returns at about 1,000 connections a second, which one
    # hub holds, while each device is back within seconds of a broker restart.
    reconnect_spread_s: float = schema.setting(
        10.0,
        help="the first retry after a lost broker link waits a random 0 to this many seconds, "
        "drawn per device, so a fleet does not return all at once; later waits grow from it "
        "up to reconnect_max_delay (0: no spread)",
        min=0,
        max=3600,
    )
    refused_retry_s: float = schema.setting(
        600.0,
        help="seconds between reconnect attempts once the broker refuses this device's "
        "certificate for good (revoked, or expired past renewal): only a new enrollment "
        "mends that",
        min=0.5,
        max=86400,
    )
    broker: str = schema.setting(
        "", help="override the broker given at enrollment, mqtts://HOST:PORT", max_len=256
    )
    local_port: int = schema.setting(
        0,
        help="also serve the local API on 127.0.0.1:PORT (0: Unix socket only)",
        min=0,
        max=65535,
    )
    log_level: str = schema.setting("info", help="debug, info, warning or error", max_len=16)
    log_format: logs.LogFormat = schema.setting(
        "auto", help="json (one object per line, for journald), text, or auto (text on a terminal)"
    )
    bounds: Bounds = field(default_factory=Bounds, metadata={"help": "store bounds"})
    sync: Sync = field(default_factory=Sync, metadata={"help": "draining to the hub"})
    inference: Inference = field(
        default_factory=Inference, metadata={"help": "local inference and its reporting"}
    )
    task_inbox: int = schema.setting(
        64, help="tasks from the hub held at once (running and waiting); more are rejected", min=1
    )

    def __post_init__(self) -> None:
        check_log_level(self.log_level, "agent.log_level")
        if self.broker:
            parse_broker_url(self.broker, "agent.broker")
        try:
            parse_windows(self.sync.windows)
        except ValueError as exc:
            raise schema.SchemaError("agent.sync.windows", str(exc)) from exc
