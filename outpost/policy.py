"""Policy: the settings the hub sets for its devices, as a validated, signed document.

The hub merges layers (fleet default, then groups chosen by label selector, then the
device's own override; see `merge`) into one effective policy per device, gives it a
version that only grows, signs it with its Ed25519 key and delivers it retained on the
device's `down/policy` topic. The agent applies it only if the signature verifies against
the key it received at enrollment, the document names it, and the version is newer than
the one it holds.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ed25519

from outpost import schema, signing
from outpost.settings import check_log_level
from outpost.signing import Signed as Signed  # re-exported: part of this API
from outpost.windows import parse_windows


class PolicyError(ValueError):
    """A policy document or its envelope is refused; the message says why."""


@dataclass(frozen=True)
class StreamBoundsPolicy:
    max_records: int = schema.setting(
        100_000, help="records kept unsent, at most (0: no limit)", min=0
    )
    max_bytes: int = schema.setting(
        64 << 20, help="bytes kept unsent, at most (0: no limit)", min=0
    )
    max_age_s: float = schema.setting(0.0, help="drop records older than this (0: never)", min=0)


@dataclass(frozen=True)
class BoundsPolicy:
    results: StreamBoundsPolicy = field(
        default_factory=StreamBoundsPolicy, metadata={"help": "results stream"}
    )
    events: StreamBoundsPolicy = field(
        default_factory=lambda: StreamBoundsPolicy(50_000, 16 << 20, 0.0),
        metadata={"help": "events stream"},
    )
    metrics: StreamBoundsPolicy = field(
        default_factory=lambda: StreamBoundsPolicy(50_000, 16 << 20, 14 * 86400.0),
        metadata={"help": "metrics stream (rolled up, then evicted, when full)"},
    )


@dataclass(frozen=True)
class SyncPolicy:
    rate_bytes_per_s: int = schema.setting(0, help="upload rate cap, bytes/s (0: none)", min=0)
    windows: list[str] = schema.setting(
        [], help='local times to sync, e.g. ["01:00-05:00"]; empty: always', max_len=24
    )


@dataclass(frozen=True)
class TasksPolicy:
    concurrency: int = schema.setting(
        0, help="tasks run at once (0: the device profile's budget)", min=0, max=64
    )
    prefetch: int = schema.setting(
        2, help="tasks given to a device beyond those it runs (work ahead)", min=0, max=1000
    )
    cpu_max_percent: float = schema.setting(
        100.0,
        help="above this CPU use the device accepts no new task (100: no cap)",
        min=1,
        max=100,
    )
    temperature_max_c: float = schema.setting(
        85.0, help="above this temperature the device accepts no new task", min=20, max=150
    )


@dataclass(frozen=True)
class InferencePolicy:
    report: Literal["all", "flagged", "none"] = schema.setting(
        "flagged", help="local inferences recorded as results"
    )
    confidence_below: float = schema.setting(
        0.6, help="a confidence below this flags an inference", min=0, max=1
    )


@dataclass(frozen=True)
class MaskingPolicy:
    drop: list[str] = schema.setting(
        [], help="record fields removed before upload and from logs", max_len=64
    )
    hash: list[str] = schema.setting(
        [], help="record fields replaced by a keyed hash before upload and in logs", max_len=64
    )


@dataclass(frozen=True)
class Policy:
    """The effective policy of one device: every field has a value."""

    heartbeat_interval: float = schema.setting(
        10.0, help="seconds between heartbeats", min=0.2, max=3600
    )
    metrics_interval: float = schema.setting(
        60.0, help="seconds between the agent's metrics records", min=0.2, max=86400
    )
    bounds: BoundsPolicy = field(default_factory=BoundsPolicy, metadata={"help": "store bounds"})
    sync: SyncPolicy = field(default_factory=SyncPolicy, metadata={"help": "upload pacing"})
    tasks: TasksPolicy = field(default_factory=TasksPolicy, metadata={"help": "task limits"})
    inference: InferencePolicy = field(
        default_factory=InferencePolicy, metadata={"help": "local inference reporting"}
    )
    masking: MaskingPolicy = field(
        default_factory=MaskingPolicy, metadata={"help": "fields masked before upload"}
    )
    log_level: str = schema.setting("info", help="debug, info, warning or error", max_len=16)
    allowed_models: list[str] = schema.setting(
        [], help="models the device may run (empty: any)", max_len=256
    )

    def __post_init__(self) -> None:
        check_log_level(self.log_level, "log_level")
        try:
            parse_windows(self.sync.windows)
        except ValueError as exc:
            raise schema.SchemaError("sync.windows", str(exc)) from exc


DEFAULTS: dict[str, Any] = schema.dump(Policy())


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Layers applied in order onto the defaults: a later layer's value wins; maps merge
    key by key; lists are replaced whole."""
    merged = copy.deepcopy(DEFAULTS)
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def overlay(*layers: dict[str, Any]) -> dict[str, Any]:
    """The same merge without the defaults: only the fields some layer sets. This is what
    a device receives: what no layer sets stays as the device's own settings say."""
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def is_set(document: dict[str, Any], dotted: str) -> bool:
    """Whether a (sparse) policy document sets the field `a.b.c`."""
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_layer(layer: dict[str, Any], where: str) -> None:
    """Refuse a layer with an unknown field or a bad value, naming it."""
    load(merge(layer), where)


def load(document: dict[str, Any], where: str = "policy") -> Policy:
    try:
        return schema.load(Policy, document, where)
    except schema.SchemaError as exc:
        raise PolicyError(str(exc)) from exc


def digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(signing.canonical(document)).hexdigest()


# ------------------------------------------------------------------ signed envelope


@dataclass(frozen=True)
class Issued:
    device_id: str
    version: int
    issued_at: float
    policy: Policy
    raw: dict[str, Any]


def sign(
    key: ed25519.Ed25519PrivateKey,
    device_id: str,
    version: int,
    issued_at: float,
    document: dict[str, Any],
) -> Signed:
    body = {"device_id": device_id, "version": version, "issued_at": issued_at, "policy": document}
    return signing.sign(key, body)


def verify(public: ed25519.Ed25519PublicKey, signed: Signed, device_id: str) -> Issued:
    """The issued policy, or `PolicyError` saying why it is refused (checked in this
    order: signature, shape, addressee, content)."""
    try:
        body = signing.open_signed(public, signed, "policy")
    except signing.SignatureError as exc:
        raise PolicyError(str(exc).removeprefix("policy: ")) from exc
    if set(body) != {"device_id", "version", "issued_at", "policy"}:
        raise PolicyError("signed document lacks device_id, version, issued_at or policy")
    if body["device_id"] != device_id:
        raise PolicyError(f"policy is for {body['device_id']!r}, not this device")
    if not isinstance(body["version"], int) or body["version"] < 1:
        raise PolicyError("version must be a positive integer")
    issued_at = body["issued_at"]
    if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)):
        raise PolicyError("issued_at must be a number")
    if not isinstance(body["policy"], dict):
        raise PolicyError("policy must be a map")
    # The document sets some fields; checked as a whole on top of the defaults.
    checked = load(merge(body["policy"]))
    return Issued(device_id, body["version"], float(issued_at), checked, body["policy"])


def _merge_into(target: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
