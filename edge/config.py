"""The agent's settings: `[agent]` in `agent.toml` of its data folder, overridden by flags."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from outpost import logs
from outpost.schema import FINITE, INT64_MAX
from outpost.settings import parse_broker_url
from outpost.tunables import InferenceTunables, SyncTunables, Tunables
from outpost.wire.contract import Encoding, all_encodings

SECTION = "agent"


class Sync(SyncTunables, frozen=True):
    """How the agent drains its store to the hub (its pacing shared with the policy)."""

    batch_records: Annotated[
        int, Meta(ge=1, le=1000, description="records per upload message, at most")
    ] = 1000
    # The hub refuses a batch larger than its max_payload_bytes (256 KiB by default) once
    # decompressed: keep this below that.
    batch_bytes: Annotated[
        int,
        Meta(
            ge=1024,
            le=200 * 1024,
            description="plain bytes per upload message, about, at most: batches start at "
            "64 KiB and grow to this while the hub acknowledges them quickly, and shrink "
            "while it does not",
        ),
    ] = 200 * 1024
    in_flight: Annotated[
        int, Meta(ge=1, le=64, description="upload messages sent but not acknowledged")
    ] = 4
    ack_timeout_s: Annotated[
        float,
        Meta(
            ge=0.5,
            le=FINITE,
            description="resend unacknowledged batches after this long (each resend in a row "
            "waits twice as long, up to 2 min)",
        ),
    ] = 15.0
    linger_ms: Annotated[
        float,
        Meta(
            ge=0,
            le=10_000,
            description="while a stream's last batch is unacknowledged, a batch short of "
            "batch_records waits up to this long after it for more records (a quiet "
            "stream's records go at once; a busy one's go in fewer, larger batches); 0 "
            "sends each at once",
        ),
    ] = 20.0
    compression: Annotated[
        list[Encoding],
        Meta(
            max_length=2,
            description="batch encodings offered to the hub, preferred first (zstd-dict1: zstd "
            "with Outpost's dictionary; zstd); batches go compressed once the hub accepts one on "
            "the connection, when that makes them smaller; [] sends them plain",
        ),
    ] = msgspec.field(default_factory=all_encodings)


class Inference(InferenceTunables, frozen=True):
    """Local inference: the runtime, back-pressure, and which results go to the hub."""

    runtime: Annotated[
        Literal["auto", "ai-edge-litert", "tflite-runtime"],
        Meta(description="interpreter package; auto: ai-edge-litert, else tflite-runtime"),
    ] = "auto"
    queue_limit: Annotated[
        int,
        Meta(
            ge=0,
            le=INT64_MAX,
            description="requests waiting per model beyond those running; more are refused",
        ),
    ] = 16
    max_body_bytes: Annotated[
        int, Meta(ge=1024, le=64 << 20, description="largest local API request body, bytes")
    ] = 4 << 20


class AgentConfig(Tunables, frozen=True):
    """Every agent setting, with its default and what it is for (those a policy may
    set too are declared in `Tunables`)."""

    keepalive: Annotated[
        int,
        Meta(
            ge=5,
            le=3600,
            description="MQTT keepalive, seconds: how soon the broker notices a cut link",
        ),
    ] = 30
    reconnect_max_delay: Annotated[
        float,
        Meta(
            ge=0.5,
            le=3600,
            description="cap of the jittered back-off between reconnect attempts, seconds",
        ),
    ] = 60.0
    # 10 s: a 10,000-device fleet returns at about 1,000 connections a second, which one
    # hub holds, while each device is back within seconds of a broker restart.
    reconnect_spread_s: Annotated[
        float,
        Meta(
            ge=0,
            le=3600,
            description="the first retry after a lost broker link waits a random 0 to this many "
            "seconds, "
            "drawn per device, so a fleet does not return all at once; later waits grow from it "
            "up to reconnect_max_delay (0: no spread)",
        ),
    ] = 10.0
    refused_retry_s: Annotated[
        float,
        Meta(
            ge=0.5,
            le=86400,
            description="seconds between reconnect attempts once the broker refuses this device's "
            "certificate for good (revoked, or expired past renewal): only a new enrollment "
            "mends that",
        ),
    ] = 600.0
    broker: Annotated[
        str,
        Meta(
            max_length=256, description="override the broker given at enrollment, mqtts://HOST:PORT"
        ),
    ] = ""
    local_port: Annotated[
        int,
        Meta(
            ge=0,
            le=65535,
            description="also serve the local API on 127.0.0.1:PORT (0: Unix socket only)",
        ),
    ] = 0
    log_format: Annotated[
        logs.LogFormat,
        Meta(
            description="json (one object per line, for journald), text, or auto (text on a "
            "terminal)"
        ),
    ] = "auto"
    sync: Annotated[Sync, Meta(description="draining to the hub")] = Sync()
    inference: Annotated[Inference, Meta(description="local inference and its reporting")] = (
        Inference()
    )
    task_inbox: Annotated[
        int,
        Meta(
            ge=1,
            le=INT64_MAX,
            description="tasks from the hub held at once (running and waiting); more are rejected",
        ),
    ] = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.broker:
            parse_broker_url(self.broker, "broker")
