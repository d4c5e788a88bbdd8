"""The wire contract between agent and hub: topics, the msgpack envelope, message bodies.

Topics: ``outpost/v1/dev/{device_id}/up/{kind}`` (device to hub) and
``outpost/v1/dev/{device_id}/down/{kind}`` (hub to device). The broker's ACL lets a
device write only its own ``up/#`` and read only its own ``down/#``.

Every payload is a msgpack map ``{v, kind, id, ts, body}``. A payload that is too large,
not msgpack, nested too deep, of an unknown version or kind, or whose body does not match
its schema is refused with a `WireError` whose `reason` is a short stable code (used in
metrics) and whose text says what was wrong, quoting at most a short excerpt of what was
sent. `decode` raises nothing else, whatever the bytes: they may come from a device an
attacker holds.

`encode` applies the same checks to what it is about to send, and raises `EncodeError`:
a message that breaks the contract is a bug of its sender, to be seen in the sender's
log with its traceback, not a silent refusal at the receiver. Free text made from
exceptions or other unbounded sources is cut to its field's length with `clip` where it
is made.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack

from outpost import schema

VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 256 * 1024
TOPIC_PREFIX: Final = "outpost/v1/dev"
UP_WILDCARD: Final = f"{TOPIC_PREFIX}/+/up/#"

# Nesting of lists and maps a payload may have, the envelope counting as 1. The `up`
# contract needs 5 (heartbeat.store.streams.<name>.records); `down` tasks need 4 plus the
# rank of the model's input as nested lists (4 for an image batch; LiteRT models rarely
# go past 6). 16 leaves room for both and keeps every walk over a decoded message, and
# every repr of one, far from Python's recursion limit (msgpack's own is 1,024).
MAX_DEPTH: Final = 16
# Entries a map may have, checked inside msgpack's parser before Python objects are made
# for them. The contract's largest map is a heartbeat's store counters (at most 64).
MAX_MAP_ENTRIES: Final = 1024

# Device ids are assigned by the hub; the pattern keeps them safe as a topic level and
# as a certificate CN (no MQTT wildcards, no separators).
DEVICE_ID_PATTERN: Final = re.compile(r"^dev-[a-z0-9]{6,32}$")
_KIND_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class WireError(ValueError):
    """A message broke the wire contract; `reason` is a short code for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EncodeError(ValueError):
    """A message this program built breaks the wire contract: a bug in its sender."""


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying so when it was cut (for free-text
    fields: an exception's message, a log excerpt). `limit` is the field's `max_len`:
    `clip(text, schema.max_len(TaskUpdate, "reason"))`."""
    if len(text) <= limit:
        return text
    marker = f"…[{len(text)} chars]"
    return text[: max(0, limit - len(marker))] + marker[:limit]


# ---------------------------------------------------------------------------- topics


def up_topic(device_id: str, kind: str) -> str:
    """Return the topic on which `device_id` sends messages of `kind` to the hub."""
    return f"{TOPIC_PREFIX}/{device_id}/up/{kind}"


def down_topic(device_id: str, kind: str) -> str:
    """Return the topic on which the hub sends messages of `kind` to `device_id`."""
    return f"{TOPIC_PREFIX}/{device_id}/down/{kind}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a device topic into (device_id, direction, kind), refusing anything else."""
    prefix = TOPIC_PREFIX + "/"
    parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if len(parts) != 3 or parts[1] not in ("up", "down"):
        raise WireError("topic", f"not a device topic: {schema.quote(topic)}")
    device_id, direction, kind = parts
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise WireError("topic", f"bad device id in topic: {schema.quote(device_id)}")
    if not _KIND_PATTERN.fullmatch(kind):
        raise WireError("topic", f"bad kind in topic: {schema.quote(kind)}")
    return device_id, direction, kind


# ---------------------------------------------------------------------------- bodies


@dataclass(frozen=True)
class Capabilities:
    """What a device can run: measured by the agent, accelerator from its profile."""

    cores: int = schema.setting(help="logical CPU cores", min=1, max=4096)
    memory_bytes: int = schema.setting(help="total memory", min=0)
    disk_bytes: int = schema.setting(help="size of the data folder's file system", min=0)
    accelerator: str = schema.setting("none", help="accelerator named by the profile", max_len=64)
    arch: str = schema.setting("", help="machine architecture, e.g. aarch64", max_len=32)


@dataclass(frozen=True)
class ModelInfo:
    """An installed model's active version, as the device reports it."""

    name: str = schema.setting(help="model name", max_len=64)
    version: str = schema.setting(help="active version", max_len=32)
    sha256: str = schema.setting(help="sha256 of the model file (empty if unreadable)", max_len=64)
    state: Literal["ready", "failed"] = schema.setting(help="loaded and self-tested, or not")
    error: str = schema.setting("", help="why it failed", max_len=256)


MAX_MODELS: Final = 256


@dataclass(frozen=True)
class Hello:
    """Sent on every connection: who the device is and what it can do."""

    conn: str = schema.setting(help="id of this MQTT connection", max_len=64)
    agent_version: str = schema.setting(help="version of the agent", max_len=32)
    profile: str = schema.setting(help="name of the device profile", max_len=64)
    heartbeat_interval: float = schema.setting(help="seconds between heartbeats", min=0.1)
    capabilities: Capabilities = schema.setting(help="what the device can run")
    runtime: str = schema.setting("", help="inference runtime and its version, or none", max_len=64)
    models: list[ModelInfo] = schema.setting([], help="installed models", max_len=MAX_MODELS)
    task_slots: int = schema.setting(
        0, help="tasks the device runs at once (0: it takes no tasks)", min=0, max=1024
    )
    task_inbox: int = schema.setting(
        0, help="tasks it holds at most, running and waiting (0: no limit said)", min=0
    )


@dataclass(frozen=True)
class TaskLoad:
    """The device's task inbox."""

    queued: int = schema.setting(help="tasks accepted and waiting to run", min=0)
    running: int = schema.setting(help="tasks running now", min=0)


@dataclass(frozen=True)
class Load:
    """How busy a device is right now."""

    cpu_percent: float = schema.setting(help="CPU use over the last interval", min=0, max=100)
    memory_percent: float = schema.setting(help="memory in use", min=0, max=100)
    disk_percent: float = schema.setting(help="data folder's file system in use", min=0, max=100)
    rss_bytes: int = schema.setting(help="the agent's own resident memory", min=0)
    temperature_c: float | None = schema.setting(None, help="hottest sensor, if any")


@dataclass(frozen=True)
class StreamFill:
    """How much of one upload stream waits on the device."""

    records: int = schema.setting(help="records not yet acknowledged", min=0)
    bytes: int = schema.setting(help="their size on disk", min=0)
    oldest_ts: float | None = schema.setting(None, help="write time of the oldest, epoch s")
    fill: float | None = schema.setting(
        None, help="the larger of records and bytes against the stream's bounds, 0..1", min=0
    )


@dataclass(frozen=True)
class StoreReport:
    """The device's store: fill per stream, what it dropped or refused, its flash wear."""

    streams: dict[str, StreamFill] = schema.setting(help="fill per stream", max_len=8)
    counters: dict[str, int] = schema.setting(
        help="refused.*, rolled_up.*, evicted.*, expired.*, wear.* counts", max_len=64
    )
    bytes_written_per_record: float = schema.setting(
        help="bytes the store wrote to disk per record appended", min=0
    )


@dataclass(frozen=True)
class PolicyReport:
    """Which signed policy the device runs, and the last one it refused (if any)."""

    version: int = schema.setting(0, help="applied version (0: none yet)", min=0)
    rejected_version: int = schema.setting(0, help="last version refused (0: none)", min=0)
    reason: str = schema.setting("", help="why it was refused", max_len=256)


@dataclass(frozen=True)
class SignedPolicy:
    """The device's effective policy, signed by the hub (retained on `down/policy`)."""

    document: bytes = schema.setting(
        help="msgpack: device_id, version, issued_at, policy", max_len=65536
    )
    signature: bytes = schema.setting(help="Ed25519 signature of document", max_len=64)


@dataclass(frozen=True)
class Heartbeat:
    """Sent every heartbeat interval while connected."""

    conn: str = schema.setting(help="id of this MQTT connection", max_len=64)
    uptime_s: float = schema.setting(help="seconds since the agent started", min=0)
    heartbeat_interval: float = schema.setting(help="seconds between heartbeats", min=0.1)
    load: Load = schema.setting(help="current load")
    store: StoreReport | None = schema.setting(None, help="the local store, if it has one")
    models: list[ModelInfo] | None = schema.setting(
        None, help="installed models, when they changed since the last report", max_len=MAX_MODELS
    )
    tasks: TaskLoad | None = schema.setting(None, help="the task inbox, if the device has one")
    policy: PolicyReport | None = schema.setting(None, help="the policy it runs")


@dataclass(frozen=True)
class Status:
    """Online on connect, offline as the last will (both retained, keyed by `conn`)."""

    conn: str = schema.setting(help="id of the MQTT connection this is about", max_len=64)
    online: bool = schema.setting(help="whether that connection is up")


# Upload streams, in drain order: results matter most, metrics least.
Stream = Literal["results", "events", "metrics"]
STREAMS: Final[tuple[Stream, ...]] = ("results", "events", "metrics")
MAX_BATCH_RECORDS: Final = 1000


@dataclass(frozen=True)
class Records:
    """A batch of one stream covering sequence numbers `from_seq`..`to_seq`.

    Numbers in that range without a record were evicted or rolled up on the device (it
    says so in its counters); the hub's high-water mark still moves past them. A batch
    whose `from_seq` lies beyond the hub's mark + 1 is a gap: refused and re-requested.
    Records travel as three parallel lists, each body the msgpack map the device stored:
    neither side rebuilds a structure per record (the drain's hot path).
    """

    stream: Stream = schema.setting(help="results, events or metrics")
    from_seq: int = schema.setting(help="first sequence number covered", min=1)
    to_seq: int = schema.setting(help="last sequence number covered", min=1)
    seqs: list[int] = schema.setting(
        help="sequence number of each record, increasing", max_len=MAX_BATCH_RECORDS
    )
    ts: list[float] = schema.setting(
        help="when the device wrote each record, epoch seconds", max_len=MAX_BATCH_RECORDS
    )
    bodies: list[bytes] = schema.setting(
        help="each record, a msgpack map", max_len=MAX_BATCH_RECORDS
    )

    def __post_init__(self) -> None:
        if self.to_seq < self.from_seq:
            raise schema.SchemaError("records.body.to_seq", "must not be below from_seq")
        if not len(self.seqs) == len(self.ts) == len(self.bodies):
            raise schema.SchemaError("records.body", "seqs, ts and bodies differ in length")
        previous = self.from_seq - 1
        for seq in self.seqs:
            if not previous < seq <= self.to_seq:
                raise schema.SchemaError(
                    "records.body.seqs",
                    f"seq {seq} out of order or outside {self.from_seq}..{self.to_seq}",
                )
            previous = seq
        for index, body in enumerate(self.bodies):
            try:
                ok = isinstance(msgpack.unpackb(body, raw=False, strict_map_key=False), dict)
            except (ValueError, TypeError, msgpack.UnpackException):
                ok = False
            if not ok:
                raise schema.SchemaError(f"records.body.bodies[{index}]", "not a msgpack map")

    @classmethod
    def pack(
        cls, stream: Stream, from_seq: int, to_seq: int, rows: list[tuple[int, float, Any]]
    ) -> Records:
        """A batch from (seq, ts, body) rows whose bodies are plain maps."""
        return cls(
            stream=stream,
            from_seq=from_seq,
            to_seq=to_seq,
            seqs=[r[0] for r in rows],
            ts=[float(r[1]) for r in rows],
            bodies=[msgpack.packb(r[2], use_bin_type=True) for r in rows],
        )


@dataclass(frozen=True)
class Ack:
    """The hub's cumulative acknowledgement: it holds every number up to `hwm`.

    With `gap` set the hub refused a batch that started beyond `hwm` + 1: the device
    must send again from `hwm` + 1.
    """

    stream: Stream = schema.setting(help="results, events or metrics")
    hwm: int = schema.setting(help="highest sequence number the hub has stored", min=0)
    gap: bool = schema.setting(False, help="a batch was refused: resend from hwm + 1")


MAX_TASK_BATCH: Final = 64
TASK_ID_PATTERN: Final = re.compile(r"tsk-[0-9a-f]{16,32}")


@dataclass(frozen=True)
class Assignment:
    """A task given to a device. `attempt` is the fencing token: a result must carry it,
    and a result of an older attempt never replaces the current one's."""

    task_id: str = schema.setting(help="task id", max_len=40)
    attempt: int = schema.setting(help="attempt number, the fencing token", min=1)
    model: str = schema.setting(help="model name", max_len=64)
    input: Any = schema.setting(help="the model input: nested lists, or the tensor's bytes")
    priority: int = schema.setting(help="higher runs first", min=0, max=9)
    deadline_in_s: float = schema.setting(help="seconds left until the task expires", min=0)
    lease_s: float = schema.setting(help="seconds the device has to finish it", min=0)
    version: str = schema.setting("", help="model version, empty: the active one", max_len=32)
    dtype: Literal["float32", "int8"] = schema.setting("float32", help="what input holds")


@dataclass(frozen=True)
class Tasks:
    """One or more assignments for the device (several when it is given work ahead)."""

    tasks: list[Assignment] = schema.setting(help="the assignments", max_len=MAX_TASK_BATCH)


@dataclass(frozen=True)
class Cancel:
    """The hub cancelled a task: drop it if it has not started."""

    task_id: str = schema.setting(help="task id", max_len=40)
    attempt: int = schema.setting(help="the attempt cancelled", min=1)


@dataclass(frozen=True)
class TaskUpdate:
    """What the device did with an assignment (results travel on the results stream)."""

    task_id: str = schema.setting(help="task id", max_len=40)
    attempt: int = schema.setting(help="attempt number", min=1)
    state: Literal["accepted", "rejected", "running"] = schema.setting(help="the new state")
    reason: str = schema.setting("", help="why it was rejected", max_len=256)


@dataclass(frozen=True)
class TaskState:
    """Task updates, batched."""

    updates: list[TaskUpdate] = schema.setting(help="the updates", max_len=MAX_TASK_BATCH)


# ------------------------------------------------------------------------ models

MAX_RELEASES: Final = 32


@dataclass(frozen=True)
class SignedRelease:
    """A model release signed by the hub (see `outpost/release.py`)."""

    document: bytes = schema.setting(
        help="msgpack: manifest, sample, issued_at", max_len=192 * 1024
    )
    signature: bytes = schema.setting(help="Ed25519 signature of document", max_len=64)


@dataclass(frozen=True)
class ModelReleases:
    """The models the hub wants the device to run, one release per model name (retained on
    `down/models`): the device installs and activates each it does not run yet. Models
    not named are left as they are."""

    releases: list[SignedRelease] = schema.setting(help="the releases", max_len=MAX_RELEASES)


DeployState = Literal["downloading", "active", "failed", "rolled_back"]


@dataclass(frozen=True)
class ModelState:
    """What became of a release on the device: sent on each change, and again after
    each hello for every release it holds."""

    name: str = schema.setting(help="model name", max_len=64)
    version: str = schema.setting(help="the release's version", max_len=32)
    state: DeployState = schema.setting(
        help="downloading; active (verified, self-tested, serving); failed (refused, the "
        "previous version serves); rolled_back (failed in use, the previous version serves)"
    )
    detail: str = schema.setting("", help="why it failed or rolled back", max_len=512)
    final: bool = schema.setting(
        True,
        help="a failure the device will not get past with this release (false: it may, "
        "say once its policy allows the model)",
    )


Body = (
    Hello
    | Heartbeat
    | Status
    | Records
    | Ack
    | Tasks
    | Cancel
    | TaskState
    | SignedPolicy
    | ModelReleases
    | ModelState
)


# kind -> body type, for each direction. Both sides refuse kinds not listed here.
UP_KINDS: Final[dict[str, type[Any]]] = {
    "hello": Hello,
    "heartbeat": Heartbeat,
    "status": Status,
    "records": Records,
    "task_state": TaskState,
    "model_state": ModelState,
}
DOWN_KINDS: Final[dict[str, type[Any]]] = {
    "ack": Ack,
    "tasks": Tasks,
    "cancel": Cancel,
    "policy": SignedPolicy,
    "models": ModelReleases,
}
_ALL_KINDS: Final = {**UP_KINDS, **DOWN_KINDS}
assert len(_ALL_KINDS) == len(UP_KINDS) + len(DOWN_KINDS), "a kind names one body type"


# ---------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Envelope:
    """A decoded message: version, kind, message id, sender's time (ms) and body."""

    v: int
    kind: str
    id: str
    ts: int
    body: Any


def new_message_id() -> str:
    """Return a fresh random message id."""
    return secrets.token_hex(8)


def encode(kind: str, body: Body, *, ts_ms: int | None = None, msg_id: str | None = None) -> bytes:
    """Encode `body` as a versioned envelope of `kind`, checked as `decode` will check it;
    raise `EncodeError` if it breaks the contract."""
    cls = _ALL_KINDS.get(kind)
    if cls is None or type(body) is not cls:
        expected = cls.__name__ if cls else "none: unknown kind"
        raise EncodeError(f"a {type(body).__name__} sent as {kind!r} (its type: {expected})")
    plain = schema.dump(body)
    header = {
        "id": msg_id or new_message_id(),
        "ts": ts_ms if ts_ms is not None else int(time.time() * 1000),
    }
    try:
        # The checks `decode` applies, on the plain data (the dataclass's own
        # `__post_init__` checks ran when it was built).
        schema.check(_Header, header, "envelope")
        schema.check(cls, plain, f"{kind}.body")
    except schema.SchemaError as exc:
        raise EncodeError(f"{kind} message breaks the wire contract: {exc}") from exc
    envelope = {"v": VERSION, "kind": kind, **header, "body": plain}
    if _deeper_than(envelope, MAX_DEPTH):
        raise EncodeError(f"{kind} message nests deeper than {MAX_DEPTH} levels")
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return packed


def decode(
    payload: bytes,
    *,
    kinds: dict[str, type[Any]],
    expected_kind: str | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Envelope:
    """Decode and validate one payload; raise `WireError` saying what was wrong, and
    nothing else, whatever the bytes."""
    if len(payload) > max_bytes:
        raise WireError("oversized", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        return _decode(payload, kinds, expected_kind)
    except WireError:
        raise
    except Exception as exc:  # a case the checks above missed: still only a refusal
        text = schema.quote(str(exc))
        raise WireError("malformed", f"undecodable: {type(exc).__name__}: {text}") from exc


def _decode(payload: bytes, kinds: dict[str, type[Any]], expected_kind: str | None) -> Envelope:
    try:
        # Strings, bytes and arrays are bounded by the payload's size (msgpack's
        # default for `unpackb`); maps tighter, so a huge one costs no Python objects.
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_map_len=MAX_MAP_ENTRIES)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError("malformed", f"not a msgpack payload: {schema.quote(str(exc))}") from exc
    if not isinstance(raw, dict):
        raise WireError("malformed", f"envelope must be a map, got {type(raw).__name__}")
    if _deeper_than(raw, MAX_DEPTH):
        raise WireError("malformed", f"payload nests deeper than {MAX_DEPTH} levels")
    version = raw.get("v")
    if type(version) is not int or version != VERSION:
        raise WireError(
            "version", f"unsupported envelope version {schema.quote(version)} (want {VERSION})"
        )
    kind = raw.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise WireError("kind", f"envelope kind {schema.quote(kind)} does not match topic kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise WireError("kind", f"unknown message kind {schema.quote(kind)}")
    try:
        header = schema.load(_Header, {k: raw.get(k) for k in ("id", "ts")}, "envelope")
        body = schema.load(kinds[kind], raw.get("body"), f"{kind}.body")
    except schema.SchemaError as exc:
        raise WireError("schema", str(exc)) from exc
    extra = set(raw) - {"v", "kind", "id", "ts", "body"}
    if extra:
        names = sorted(schema.quote(k, 40) for k in extra)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise WireError("schema", f"envelope has unknown fields: {', '.join(names[:3])}{more}")
    return Envelope(v=version, kind=kind, id=header.id, ts=header.ts, body=body)


def _deeper_than(value: dict[str, Any], limit: int) -> bool:
    """Whether lists and maps nest more than `limit` levels in `value` (itself level 1).

    Level by level, without recursion; a container's items are looked at one by one
    only if one of them is a container, which one C-level pass over their types tells.
    """
    level: list[Any] = [value]
    for _ in range(limit):
        inner: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            types = set(map(type, items))
            if list in types or dict in types:
                inner.extend(v for v in items if type(v) is list or type(v) is dict)
        if not inner:
            return False
        level = inner
    return True


@dataclass(frozen=True)
class _Header:
    id: str = schema.setting(help="message id", max_len=64)
    ts: int = schema.setting(help="sender's clock, ms since the epoch", min=0)
