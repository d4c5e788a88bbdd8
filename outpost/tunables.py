"""The tunables an agent's own settings and the hub's signed policy both carry, declared
once: `edge.config.AgentConfig` and `outpost.policy.Policy` each extend `Tunables`, so
a bound, a default or a help text cannot differ between the two.

A device runs on its own settings file; each field a policy it has verified sets wins
over it (`edge/effective.py`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from outpost import schema
from outpost.schema import FINITE, INT64_MAX, Struct
from outpost.settings import check_log_level
from outpost.windows import parse_windows


class StreamBounds(Struct, frozen=True):
    """Limits of one upload stream; 0 turns a limit off."""

    max_records: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="records kept unsent, at most (0: no limit)")
    ] = 100_000
    max_bytes: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="bytes kept unsent, at most (0: no limit)")
    ] = 64 << 20
    max_age_s: Annotated[
        float,
        Meta(
            ge=0,
            le=FINITE,
            description="records older than this are dropped and counted as expired (0: never)",
        ),
    ] = 0.0


class Bounds(Struct, frozen=True):
    """Per-stream limits: results and events are refused when full, metrics roll up."""

    results: Annotated[StreamBounds, Meta(description="the results stream")] = StreamBounds()
    events: Annotated[StreamBounds, Meta(description="the events stream")] = StreamBounds(
        50_000, 16 << 20, 0.0
    )
    metrics: Annotated[
        StreamBounds, Meta(description="the metrics stream (rolled up, then evicted, when full)")
    ] = StreamBounds(50_000, 16 << 20, 14 * 86400.0)


class SyncTunables(Struct, frozen=True):
    """When and how fast the agent drains its store to the hub."""

    rate_bytes_per_s: Annotated[
        int,
        Meta(
            ge=0, le=INT64_MAX, description="upload rate cap for metered links, bytes/s (0: none)"
        ),
    ] = 0
    windows: Annotated[
        list[str],
        Meta(
            max_length=24,
            description='local times to sync, e.g. ["01:00-05:00"]; empty: always',
        ),
    ] = []

    def __post_init__(self) -> None:
        try:
            parse_windows(self.windows)
        except ValueError as exc:
            raise schema.SchemaError("windows", str(exc)) from exc


Report = Literal["all", "flagged", "none"]


class InferenceTunables(Struct, frozen=True):
    """Which local inferences become results sent to the hub."""

    report: Annotated[
        Report,
        Meta(
            description="local inferences recorded as results: all, flagged (label not the "
            "model's normal one, or confidence below confidence_below) or none"
        ),
    ] = "flagged"
    confidence_below: Annotated[
        float, Meta(ge=0, le=1, description="a confidence below this flags an inference")
    ] = 0.6
    explain_flagged: Annotated[
        float,
        Meta(
            ge=0,
            le=1,
            description="share of flagged results also explained (POST /v1/explain's "
            "defaults), the explanation sent after its result as an `explanation` event "
            "naming the result's seq (0: none)",
        ),
    ] = 0.0
    flagged_inputs: Annotated[
        bool,
        Meta(
            description="flagged results carry the int8 input they answered (up to 64 KiB), "
            "so the hub can explain them later (POST /api/v1/explain with device and "
            "seq): inputs then leave the device (false: they never do)",
        ),
    ] = False


class Tunables(Struct, frozen=True):
    """The fields an agent's settings and a policy share."""

    heartbeat_interval: Annotated[
        float, Meta(ge=0.2, le=3600, description="seconds between heartbeats")
    ] = 10.0
    metrics_interval: Annotated[
        float,
        Meta(ge=0.2, le=86400, description="seconds between the agent's own metrics records"),
    ] = 60.0
    log_level: Annotated[str, Meta(max_length=16, description="debug, info, warning or error")] = (
        "info"
    )
    bounds: Annotated[Bounds, Meta(description="store bounds")] = Bounds()
    sync: Annotated[SyncTunables, Meta(description="draining to the hub")] = SyncTunables()
    inference: Annotated[
        InferenceTunables, Meta(description="local inference and its reporting")
    ] = InferenceTunables()

    def __post_init__(self) -> None:
        check_log_level(self.log_level, "log_level")
