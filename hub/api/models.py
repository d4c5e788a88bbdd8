"""What the API takes and answers: typed models, checked on the way in, dumped on the way
out, and turned into the OpenAPI document's schemas."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from hub.apitokens import API_KEY_TTL_DEFAULT, Kind, Role
from hub.store import ApiTokenRecord, AuditEntry, Device, StoredRecord, StreamCount, Task
from outpost import schema, wire


@dataclass(frozen=True)
class EnrollRequest:
    """A device asks for its certificate."""

    token: str = schema.setting(help="one-time bootstrap token", max_len=4096)
    csr: str = schema.setting(help="PEM certificate signing request", max_len=16384)
    profile: str = schema.setting(help="name of the device's profile", max_len=64)


@dataclass(frozen=True)
class Enrolled:
    """A new device identity."""

    device_id: str = schema.setting(help="id the hub assigned (the certificate's CN)")
    certificate: str = schema.setting(help="the device certificate, PEM")
    ca: str = schema.setting(help="the fleet CA certificate, PEM")
    signing_public_key: str = schema.setting(help="the hub's Ed25519 signing key, PEM")
    broker_url: str = schema.setting(help="where the device connects, mqtts://HOST:PORT")
    not_after: float = schema.setting(help="certificate expiry, seconds since the epoch")


@dataclass(frozen=True)
class Certificate:
    """A device certificate's identity and validity window."""

    serial: str | None = schema.setting(help="serial number, hex")
    not_before: float | None = schema.setting(help="start of validity, epoch seconds")
    not_after: float | None = schema.setting(help="end of validity, epoch seconds")


@dataclass(frozen=True)
class DeviceOut:
    """A device as the registry knows it."""

    id: str = schema.setting(help="device id")
    profile: str = schema.setting(help="device profile")
    labels: dict[str, str] = schema.setting(help="labels (site, group, ...)")
    online: bool = schema.setting(help="connected now (never, once revoked)")
    last_seen: float | None = schema.setting(help="last message, epoch seconds")
    last_heartbeat: float | None = schema.setting(help="last heartbeat, epoch seconds")
    heartbeat_interval: float | None = schema.setting(help="seconds between its heartbeats")
    agent_version: str | None = schema.setting(help="version of its agent")
    capabilities: dict[str, Any] = schema.setting(help="cores, memory, disk, accelerator")
    load: dict[str, Any] = schema.setting(help="CPU, memory, disk, RSS, temperature")
    store: dict[str, Any] | None = schema.setting(
        help="its local store: fill per stream, refusals, roll-ups, evictions, write wear"
    )
    enrolled_at: float | None = schema.setting(help="enrollment time, epoch seconds")
    certificate: Certificate = schema.setting(help="its certificate")
    runtime: str | None = schema.setting(help="its inference runtime and version")
    models: list[dict[str, Any]] = schema.setting(
        help="installed models: name, active version, sha256, state (ready or failed), error"
    )
    task_slots: int = schema.setting(help="tasks it runs at once (0: it takes none)")
    task_latency_ms: float | None = schema.setting(help="its recent task latency, averaged")
    revoked: bool = schema.setting(
        help="its certificates are revoked: it can no longer connect or renew (final)"
    )
    revoked_at: float | None = schema.setting(help="when it was first revoked, epoch seconds")
    revoked_by: str | None = schema.setting(
        help="who revoked it: the API token's subject, or `cli:<OS user>` for the "
        "`outpost-hub device revoke` command (null if not revoked, or revoked before the "
        "hub recorded who)"
    )

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(
            id=d.device_id,
            profile=d.profile,
            labels=d.labels,
            online=d.state == "online",
            last_seen=d.last_seen,
            last_heartbeat=d.last_heartbeat,
            heartbeat_interval=d.heartbeat_interval,
            agent_version=d.agent_version,
            capabilities=d.capabilities,
            load=d.load,
            store=d.store,
            enrolled_at=d.enrolled_at,
            certificate=Certificate(d.cert_serial, d.cert_not_before, d.cert_not_after),
            runtime=d.runtime,
            models=d.models,
            task_slots=d.task_slots,
            task_latency_ms=d.task_latency_ms,
            revoked=d.revoked_at is not None,
            revoked_at=d.revoked_at,
            revoked_by=d.revoked_by,
        )


@dataclass(frozen=True)
class DevicePatch:
    """Changes to a device: labels are merged; a null value removes that label."""

    labels: dict[str, str | None] = schema.setting(help="labels to set (or remove with null)")


@dataclass(frozen=True)
class RecordOut:
    """One record a device uploaded, as the hub holds it."""

    seq: int = schema.setting(help="its sequence number in the device's stream")
    ts: float = schema.setting(help="when the device wrote it, epoch seconds")
    body: Any = schema.setting(help="the record (binary values as base64 text)")
    received_at: float = schema.setting(help="when the hub stored it, epoch seconds")

    @classmethod
    def of(cls, r: StoredRecord) -> RecordOut:
        return cls(r.seq, r.ts, _jsonable(r.body), r.received_at)


@dataclass(frozen=True)
class StreamOut:
    """How much of one upload stream the hub holds for a device."""

    stream: wire.Stream = schema.setting(help="results, events or metrics")
    records: int = schema.setting(help="records held")
    hwm: int = schema.setting(help="high-water mark: every number up to it was received")

    @classmethod
    def of(cls, stream: wire.Stream, count: StreamCount | None) -> StreamOut:
        return cls(stream, count.records if count else 0, count.hwm if count else 0)


@dataclass(frozen=True)
class StreamsOut:
    """Every upload stream of a device, in drain order."""

    device_id: str = schema.setting(help="device id")
    items: list[StreamOut] = schema.setting(help="results, events and metrics")


def _jsonable(value: Any) -> Any:
    """Make a msgpack value JSON-safe: bytes (values or keys) become base64 text."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)  # a msgpack extension type: shown, not interpreted


@dataclass(frozen=True)
class EnrollTokenRequest:
    """Ask for a one-time bootstrap token."""

    ttl_s: float | None = schema.setting(
        None,
        help="lifetime in seconds (default: the hub's enroll_token_ttl)",
        min=1,
        max=30 * 86400,
    )
    labels: dict[str, str] = schema.setting({}, help="labels the enrolled device will carry")


@dataclass(frozen=True)
class EnrollTokenOut:
    """A bootstrap token; shown once, stored by the hub only as its id."""

    token: str = schema.setting(help="the token (give it to one device)")
    jti: str = schema.setting(help="token id")
    expires_at: float = schema.setting(help="expiry, epoch seconds")
    hub_url: str = schema.setting(help="the hub URL the token names")


@dataclass(frozen=True)
class ApiKeyRequest:
    """Ask for a long-lived API key for automation."""

    subject: str = schema.setting(help="who or what will use it, e.g. ci-deployer", max_len=64)
    role: Role = schema.setting(help="viewer, operator or admin")
    ttl_s: float = schema.setting(
        API_KEY_TTL_DEFAULT, help="lifetime in seconds (default 90 days)", min=1
    )


@dataclass(frozen=True)
class TokenOut:
    """An issued API token (its id and grant, never the token itself)."""

    jti: str = schema.setting(help="token id (what `revoke` takes)")
    subject: str = schema.setting(help="who it speaks for")
    role: Role = schema.setting(help="its role")
    kind: Kind = schema.setting(help="session (short-lived) or api-key")
    issued_at: float = schema.setting(help="epoch seconds")
    expires_at: float = schema.setting(help="epoch seconds")
    revoked_at: float | None = schema.setting(help="epoch seconds, if revoked")

    @classmethod
    def of(cls, r: ApiTokenRecord) -> TokenOut:
        row = {
            k: getattr(r, k)
            for k in ("jti", "subject", "role", "kind", "issued_at", "expires_at", "revoked_at")
        }
        return schema.load(cls, row, "api_tokens row")  # checks role and kind too


@dataclass(frozen=True)
class NewToken:
    """A newly minted API key; the token is shown once."""

    token: str = schema.setting(help="the bearer token")
    grant: TokenOut = schema.setting(help="what it grants")


@dataclass(frozen=True)
class AuditOut:
    """One audited request."""

    id: int = schema.setting(help="entry id")
    at: float = schema.setting(help="epoch seconds")
    subject: str = schema.setting(help="who (token subject, or anonymous@address)")
    role: str | None = schema.setting(help="their role")
    method: str = schema.setting(help="HTTP method")
    path: str = schema.setting(help="request path")
    action: str = schema.setting(help="what was attempted")
    status: int = schema.setting(help="HTTP status of the answer")
    detail: dict[str, Any] = schema.setting(help="what was changed (never a secret)")

    @classmethod
    def of(cls, e: AuditEntry) -> AuditOut:
        return cls(
            e.id,
            e.at,
            e.subject,
            e.role,
            e.method,
            e.path,
            e.action,
            e.status,
            json.loads(e.detail),
        )


@dataclass(frozen=True)
class WhoAmI:
    """The caller, as its token says."""

    subject: str = schema.setting(help="token subject")
    role: Role = schema.setting(help="token role")
    kind: Kind = schema.setting(help="session or api-key")
    jti: str = schema.setting(help="token id")
    expires_at: float = schema.setting(help="epoch seconds")


@dataclass(frozen=True)
class Health:
    """The hub answers."""

    status: str = schema.setting(help="always ok")


@dataclass(frozen=True)
class TaskTarget:
    """Where a task may run: a named device, devices matching labels, or (both empty)
    any device that has the model."""

    device: str = schema.setting("", help="run on this device only", max_len=64)
    selector: dict[str, str] = schema.setting(
        {}, help="run on a device carrying all these labels (and the model)", max_len=32
    )


@dataclass(frozen=True)
class TaskIn:
    """One task to run."""

    model: str = schema.setting(help="model name", max_len=64)
    input: Any = schema.setting(help="the model input: nested lists of numbers")
    version: str = schema.setting("", help="model version; empty: the active one", max_len=32)
    dtype: Literal["float32", "int8"] = schema.setting(
        "float32", help="float32: real values, quantized on the device; int8: quantized"
    )
    priority: int = schema.setting(5, help="0 (lowest) to 9 (highest)", min=0, max=9)
    deadline_s: float | None = schema.setting(
        None, help="seconds from now until it expires (default: the hub's)", min=0.1
    )
    lease_s: float | None = schema.setting(
        None, help="seconds a device has to finish it (default: the hub's)", min=0.1, max=7 * 86400
    )
    target: TaskTarget = field(
        default_factory=TaskTarget, metadata={"help": "where it may run (default: any)"}
    )


@dataclass(frozen=True)
class TaskBatchIn:
    """Several tasks at once."""

    tasks: list[TaskIn] = schema.setting(help="the tasks", max_len=100_000)


@dataclass(frozen=True)
class TaskIds:
    """The ids given to submitted tasks, in order."""

    ids: list[str] = schema.setting(help="task ids")


@dataclass(frozen=True)
class TaskEventOut:
    at: float = schema.setting(help="epoch seconds")
    state: str = schema.setting(help="the state entered, or late / rejected / lapsed")
    device: str | None = schema.setting(help="the device concerned")
    attempt: int = schema.setting(help="the attempt concerned")
    detail: str = schema.setting(help="why")


@dataclass(frozen=True)
class TaskOut:
    """A task and what became of it."""

    id: str = schema.setting(help="task id")
    state: str = schema.setting(
        help="queued, assigned, accepted, running, succeeded, failed, expired or cancelled"
    )
    model: str = schema.setting(help="model name")
    version: str = schema.setting(help="model version asked for (empty: any)")
    dtype: str = schema.setting(help="float32 or int8")
    priority: int = schema.setting(help="0 to 9")
    deadline: float = schema.setting(help="expiry, epoch seconds")
    lease_s: float = schema.setting(help="lease length, seconds")
    target: dict[str, Any] = schema.setting(help="device or selector, or empty for any")
    created_at: float = schema.setting(help="submission time, epoch seconds")
    updated_at: float = schema.setting(help="last change, epoch seconds")
    attempt: int = schema.setting(help="assignments so far (the current fencing token)")
    device: str | None = schema.setting(help="the device of the current or last attempt")
    lease_expires: float | None = schema.setting(help="end of the current lease")
    excluded: list[str] = schema.setting(help="devices that rejected or lost it")
    result: dict[str, Any] | None = schema.setting(help="label, confidence, scores, latency")
    error: str = schema.setting(help="why it failed, expired or was cancelled")
    finished_at: float | None = schema.setting(help="when it ended, epoch seconds")
    submitted_by: str = schema.setting(help="subject of the token that submitted it")
    input_bytes: int = schema.setting(help="size of its input (msgpack)")
    events: list[TaskEventOut] = schema.setting(
        help="every transition, rejection, lapse and late result (single reads only)"
    )

    @classmethod
    def of(cls, t: Task) -> TaskOut:
        return cls(
            id=t.task_id,
            state=t.state,
            model=t.model,
            version=t.version,
            dtype=t.dtype,
            priority=t.priority,
            deadline=t.deadline,
            lease_s=t.lease_s,
            target=t.target,
            created_at=t.created_at,
            updated_at=t.updated_at,
            attempt=t.attempt,
            device=t.device_id,
            lease_expires=t.lease_expires,
            excluded=t.excluded,
            result=t.result,
            error=t.error,
            finished_at=t.finished_at,
            submitted_by=t.submitted_by,
            input_bytes=t.input_bytes,
            events=[
                TaskEventOut(e.at, e.state, e.device_id, e.attempt, e.detail) for e in t.events
            ],
        )


@dataclass(frozen=True)
class RenewRequest:
    """A device asks for a new certificate for the key it holds (no token needed)."""

    certificate: str = schema.setting(
        help="a certificate the device holds (PEM), expired ones within the grace period too",
        max_len=16384,
    )
    csr: str = schema.setting(
        help="PEM certificate signing request signed with that certificate's key",
        max_len=16384,
    )


@dataclass(frozen=True)
class RenewedOut:
    """A renewed device certificate."""

    certificate: str = schema.setting(help="the new device certificate, PEM")
    not_after: float = schema.setting(help="its expiry, seconds since the epoch")


@dataclass(frozen=True)
class RevokedOut:
    """What revoking a device did."""

    device_id: str = schema.setting(help="the revoked device")
    revoked_at: float = schema.setting(help="when it was (first) revoked, epoch seconds")
    certificates: int = schema.setting(help="its certificates now listed in the CRL")
    broker_reloaded: bool = schema.setting(
        help="the broker re-read the CRL (the managed one, or an external one through"
        " broker_reload_command; false when it did not confirm or none is set)"
    )
    disconnected: bool = schema.setting(help="its broker session, if any, was closed")
    already_revoked: bool = schema.setting(
        False, help="it was revoked before this request (the steps were done again)"
    )
    proven: bool = schema.setting(
        False,
        help="the broker refused a certificate of this device as revoked after the reload",
    )
    proof_failure: str = schema.setting("", help="why the proof failed, if it did")
