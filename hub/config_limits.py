"""How long a device's credentials last and how much traffic the hub takes from each
party: the lifetimes, presence and rate limits in `[hub]`.

Apart from hub/config.py because these keys are tuning that enrollment, the MQTT intake
and the web server each read, with no rule tying them to the addresses; the one rule
across sections (a task's input must fit in `max_payload_bytes`) is checked by
`HubConfig`, which holds both.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from hub.config_endpoints import EndpointSettings
from outpost.schema import FINITE, INT64_MAX
from outpost.wire.contract import Encoding, all_encodings


# msgspec takes fields from one base only, so the sections of `[hub]` stack: each adds
# its keys after its base's, in the order the settings reference lists them.
class LimitSettings(EndpointSettings, frozen=True):
    """The `[hub]` keys that bound credentials' lifetimes and each party's traffic."""

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
        int,
        Meta(
            ge=1024,
            le=16 << 20,
            description="largest MQTT payload accepted from a device, and the most a "
            "compressed batch may decompress to; keep it 32 KiB above the agents' "
            "sync.batch_bytes (200 KiB by default), or their largest batches are refused",
        ),
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
            description=(
                "failed authentications per minute from one address before its failing "
                "requests get 429 (credentials that verify still pass)"
            ),
        ),
    ] = 30
