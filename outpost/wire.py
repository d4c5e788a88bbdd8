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

import itertools
import re
import secrets
import time
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from outpost import schema
from outpost.schema import FINITE, INT64_MAX, INT64_MIN, Struct

VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 256 * 1024
TOPIC_PREFIX: Final = "outpost/v1/dev"
UP_WILDCARD: Final = f"{TOPIC_PREFIX}/+/up/#"

# Nesting of lists and maps a payload may have, the envelope counting as 1. The declared
# types bound it everywhere but a task's input (any nested lists): `down` tasks need 4
# plus the rank of the model's input (4 for an image batch; LiteRT models rarely go past
# 6). 16 leaves room and keeps every walk over a decoded input, and every repr of one,
# far from Python's recursion limit (msgspec refuses deeper than that limit itself).
MAX_DEPTH: Final = 16

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
# Each body is declared once, with its bounds: msgspec checks them as it decodes, and
# `encode` checks what it sends the same way.


class Capabilities(Struct, frozen=True):
    """What a device can run: measured by the agent, accelerator from its profile."""

    cores: Annotated[int, Meta(ge=1, le=4096, description="logical CPU cores")]
    memory_bytes: Annotated[int, Meta(ge=0, le=INT64_MAX, description="total memory")]
    disk_bytes: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="size of the data folder's file system")
    ]
    accelerator: Annotated[
        str, Meta(max_length=64, description="accelerator named by the profile")
    ] = "none"
    arch: Annotated[str, Meta(max_length=32, description="machine architecture, e.g. aarch64")] = ""


class ModelInfo(Struct, frozen=True):
    """An installed model's active version, as the device reports it."""

    name: Annotated[str, Meta(max_length=64, description="model name")]
    version: Annotated[str, Meta(max_length=32, description="active version")]
    sha256: Annotated[
        str, Meta(max_length=64, description="sha256 of the model file (empty if unreadable)")
    ]
    state: Annotated[Literal["ready", "failed"], Meta(description="loaded and self-tested, or not")]
    error: Annotated[str, Meta(max_length=256, description="why it failed")] = ""


MAX_MODELS: Final = 256
Interval = Annotated[float, Meta(ge=0.1, le=86_400, description="seconds between heartbeats")]
ConnId = Annotated[str, Meta(max_length=64, description="id of this MQTT connection")]


class Hello(Struct, frozen=True):
    """Sent on every connection: who the device is and what it can do."""

    conn: ConnId
    agent_version: Annotated[str, Meta(max_length=32, description="version of the agent")]
    profile: Annotated[str, Meta(max_length=64, description="name of the device profile")]
    heartbeat_interval: Interval
    capabilities: Annotated[Capabilities, Meta(description="what the device can run")]
    runtime: Annotated[
        str, Meta(max_length=64, description="inference runtime and its version, or none")
    ] = ""
    models: Annotated[
        list[ModelInfo], Meta(max_length=MAX_MODELS, description="installed models")
    ] = []
    task_slots: Annotated[
        int, Meta(ge=0, le=1024, description="tasks the device runs at once (0: it takes no tasks)")
    ] = 0
    task_inbox: Annotated[
        int,
        Meta(
            ge=0,
            le=INT64_MAX,
            description="tasks it holds at most, running and waiting (0: no limit said)",
        ),
    ] = 0


class TaskLoad(Struct, frozen=True):
    """The device's task inbox."""

    queued: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="tasks accepted and waiting to run")
    ]
    running: Annotated[int, Meta(ge=0, le=INT64_MAX, description="tasks running now")]


Percent = Annotated[float, Meta(ge=0, le=100)]


class Load(Struct, frozen=True):
    """How busy a device is right now."""

    cpu_percent: Annotated[Percent, Meta(description="CPU use over the last interval")]
    memory_percent: Annotated[Percent, Meta(description="memory in use")]
    disk_percent: Annotated[Percent, Meta(description="data folder's file system in use")]
    rss_bytes: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="the agent's own resident memory")
    ]
    temperature_c: (
        Annotated[float, Meta(ge=-FINITE, le=FINITE, description="hottest sensor, if any")] | None
    ) = None


class StreamFill(Struct, frozen=True):
    """How much of one upload stream waits on the device."""

    records: Annotated[int, Meta(ge=0, le=INT64_MAX, description="records not yet acknowledged")]
    bytes: Annotated[int, Meta(ge=0, le=INT64_MAX, description="their size on disk")]
    oldest_ts: (
        Annotated[float, Meta(ge=0, le=FINITE, description="write time of the oldest, epoch s")]
        | None
    ) = None
    fill: (
        Annotated[
            float,
            Meta(
                ge=0,
                le=FINITE,
                description="the larger of records and bytes against the stream's bounds, 0..1",
            ),
        ]
        | None
    ) = None


class StoreReport(Struct, frozen=True):
    """The device's store: fill per stream, what it dropped or refused, its flash wear."""

    streams: Annotated[dict[str, StreamFill], Meta(max_length=8, description="fill per stream")]
    counters: Annotated[
        dict[
            Annotated[str, Meta(max_length=128)], Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
        ],
        Meta(
            max_length=64, description="refused.*, rolled_up.*, evicted.*, expired.*, wear.* counts"
        ),
    ]
    bytes_written_per_record: Annotated[
        float,
        Meta(ge=0, le=FINITE, description="bytes the store wrote to disk per record appended"),
    ]


class PolicyReport(Struct, frozen=True):
    """Which signed policy the device runs, and the last one it refused (if any)."""

    version: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="applied version (0: none yet)")
    ] = 0
    rejected_version: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="last version refused (0: none)")
    ] = 0
    reason: Annotated[str, Meta(max_length=256, description="why it was refused")] = ""


Signature = Annotated[bytes, Meta(max_length=64, description="Ed25519 signature of document")]


class SignedPolicy(Struct, frozen=True):
    """The device's effective policy, signed by the hub (retained on `down/policy`)."""

    document: Annotated[
        bytes, Meta(max_length=65536, description="msgpack: device_id, version, issued_at, policy")
    ]
    signature: Signature


class Heartbeat(Struct, frozen=True):
    """Sent every heartbeat interval while connected."""

    conn: ConnId
    uptime_s: Annotated[float, Meta(ge=0, le=FINITE, description="seconds since the agent started")]
    heartbeat_interval: Interval
    load: Annotated[Load, Meta(description="current load")]
    store: Annotated[StoreReport | None, Meta(description="the local store, if it has one")] = None
    models: (
        Annotated[
            list[ModelInfo],
            Meta(
                max_length=MAX_MODELS,
                description="installed models, when they changed since the last report",
            ),
        ]
        | None
    ) = None
    tasks: Annotated[TaskLoad | None, Meta(description="the task inbox, if the device has one")] = (
        None
    )
    policy: Annotated[PolicyReport | None, Meta(description="the policy it runs")] = None


class Status(Struct, frozen=True):
    """Online on connect, offline as the last will (both retained, keyed by `conn`)."""

    conn: Annotated[str, Meta(max_length=64, description="id of the MQTT connection this is about")]
    online: Annotated[bool, Meta(description="whether that connection is up")]


# Upload streams, in drain order: results matter most, metrics least.
Stream = Literal["results", "events", "metrics"]
STREAMS: Final[tuple[Stream, ...]] = ("results", "events", "metrics")
MAX_BATCH_RECORDS: Final = 1000
Seq = Annotated[int, Meta(ge=1, le=INT64_MAX)]
# A stored record's body: a msgpack map with string keys, checked by decoding it whole.
_RECORD_BODY: Final = msgspec.msgpack.Decoder(dict[str, Any])


class Records(Struct, frozen=True):
    """A batch of one stream covering sequence numbers `from_seq`..`to_seq`.

    Numbers in that range without a record were evicted or rolled up on the device (it
    says so in its counters); the hub's high-water mark still moves past them. A batch
    whose `from_seq` lies beyond the hub's mark + 1 is a gap: refused and re-requested.
    Records travel as three parallel lists, each body the msgpack map the device stored:
    neither side rebuilds a structure per record (the drain's hot path).
    """

    stream: Annotated[Stream, Meta(description="results, events or metrics")]
    from_seq: Annotated[Seq, Meta(description="first sequence number covered")]
    to_seq: Annotated[Seq, Meta(description="last sequence number covered")]
    seqs: Annotated[
        list[Seq],
        Meta(
            max_length=MAX_BATCH_RECORDS, description="sequence number of each record, increasing"
        ),
    ]
    ts: Annotated[
        list[float],
        Meta(
            max_length=MAX_BATCH_RECORDS,
            description="when the device wrote each record, epoch seconds",
        ),
    ]
    bodies: Annotated[
        list[bytes], Meta(max_length=MAX_BATCH_RECORDS, description="each record, a msgpack map")
    ]

    def __post_init__(self) -> None:
        if self.to_seq < self.from_seq:
            raise schema.SchemaError("to_seq", "must not be below from_seq")
        if not len(self.seqs) == len(self.ts) == len(self.bodies):
            raise schema.SchemaError("", "seqs, ts and bodies differ in length")
        previous = self.from_seq - 1
        for seq in self.seqs:
            if not previous < seq <= self.to_seq:
                raise schema.SchemaError(
                    "seqs", f"seq {seq} out of order or outside {self.from_seq}..{self.to_seq}"
                )
            previous = seq
        for index, body in enumerate(self.bodies):
            try:
                _RECORD_BODY.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                raise schema.SchemaError(f"bodies[{index}]", "not a msgpack map") from None

    @classmethod
    def pack(
        cls, stream: Stream, from_seq: int, to_seq: int, rows: list[tuple[int, float, Any]]
    ) -> Records:
        """A batch from (seq, ts, body) rows whose bodies are plain maps."""
        encode = msgspec.msgpack.encode
        return cls(
            stream=stream,
            from_seq=from_seq,
            to_seq=to_seq,
            seqs=[r[0] for r in rows],
            ts=[float(r[1]) for r in rows],
            bodies=[encode(r[2]) for r in rows],
        )


class Ack(Struct, frozen=True):
    """The hub's cumulative acknowledgement: it holds every number up to `hwm`.

    With `gap` set the hub refused a batch that started beyond `hwm` + 1: the device
    must send again from `hwm` + 1.
    """

    stream: Annotated[Stream, Meta(description="results, events or metrics")]
    hwm: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="highest sequence number the hub has stored")
    ]
    gap: Annotated[bool, Meta(description="a batch was refused: resend from hwm + 1")] = False


MAX_TASK_BATCH: Final = 64
TASK_ID_PATTERN: Final = re.compile(r"tsk-[0-9a-f]{16,32}")
TaskId = Annotated[str, Meta(max_length=40, description="task id")]
Attempt = Annotated[int, Meta(ge=1, le=INT64_MAX, description="attempt number, the fencing token")]
# Levels of nested lists a task's input may have: the envelope, the body, its list of
# tasks and the assignment take 4 of the payload's `MAX_DEPTH`.
MAX_INPUT_DEPTH: Final = MAX_DEPTH - 4


class Assignment(Struct, frozen=True):
    """A task given to a device. `attempt` is the fencing token: a result must carry it,
    and a result of an older attempt never replaces the current one's."""

    task_id: TaskId
    attempt: Attempt
    model: Annotated[str, Meta(max_length=64, description="model name")]
    input: Annotated[Any, Meta(description="the model input: nested lists, or the tensor's bytes")]
    priority: Annotated[int, Meta(ge=0, le=9, description="higher runs first")]
    deadline_in_s: Annotated[
        float, Meta(ge=0, le=FINITE, description="seconds left until the task expires")
    ]
    lease_s: Annotated[
        float, Meta(ge=0, le=FINITE, description="seconds the device has to finish it")
    ]
    version: Annotated[
        str, Meta(max_length=32, description="model version, empty: the active one")
    ] = ""
    dtype: Annotated[Literal["float32", "int8"], Meta(description="what input holds")] = "float32"

    def __post_init__(self) -> None:
        if type(self.input) in (list, dict) and _deeper_than(self.input, MAX_INPUT_DEPTH):
            raise schema.SchemaError("input", f"nests deeper than {MAX_INPUT_DEPTH} levels")


class Tasks(Struct, frozen=True):
    """One or more assignments for the device (several when it is given work ahead)."""

    tasks: Annotated[
        list[Assignment], Meta(max_length=MAX_TASK_BATCH, description="the assignments")
    ]


class Cancel(Struct, frozen=True):
    """The hub cancelled a task: drop it if it has not started."""

    task_id: TaskId
    attempt: Annotated[int, Meta(ge=1, le=INT64_MAX, description="the attempt cancelled")]


class TaskUpdate(Struct, frozen=True):
    """What the device did with an assignment (results travel on the results stream)."""

    task_id: TaskId
    attempt: Attempt
    state: Annotated[Literal["accepted", "rejected", "running"], Meta(description="the new state")]
    reason: Annotated[str, Meta(max_length=256, description="why it was rejected")] = ""


class TaskState(Struct, frozen=True):
    """Task updates, batched."""

    updates: Annotated[list[TaskUpdate], Meta(max_length=MAX_TASK_BATCH, description="the updates")]


# ------------------------------------------------------------------------ models

MAX_RELEASES: Final = 32


class SignedRelease(Struct, frozen=True):
    """A model release signed by the hub (see `outpost/release.py`)."""

    document: Annotated[
        bytes, Meta(max_length=192 * 1024, description="msgpack: manifest, sample, issued_at")
    ]
    signature: Signature


class ModelReleases(Struct, frozen=True):
    """The models the hub wants the device to run, one release per model name (retained on
    `down/models`): the device installs and activates each it does not run yet. Models
    not named are left as they are."""

    releases: Annotated[
        list[SignedRelease], Meta(max_length=MAX_RELEASES, description="the releases")
    ]


DeployState = Literal["downloading", "active", "failed", "rolled_back"]


class ModelState(Struct, frozen=True):
    """What became of a release on the device: sent on each change, and again after
    each hello for every release it holds."""

    name: Annotated[str, Meta(max_length=64, description="model name")]
    version: Annotated[str, Meta(max_length=32, description="the release's version")]
    state: Annotated[
        DeployState,
        Meta(
            description="downloading; active (verified, self-tested, serving); failed (refused, "
            "the previous version serves); rolled_back (failed in use, the previous version serves)"
        ),
    ]
    detail: Annotated[str, Meta(max_length=512, description="why it failed or rolled back")] = ""
    final: Annotated[
        bool,
        Meta(
            description="a failure the device will not get past with this release (false: it "
            "may, say once its policy allows the model)"
        ),
    ] = True


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


# Message ids: a random prefix per process and a counter. Nothing deduplicates by id
# (sequence numbers do that); it names a message in logs, and costs less than a random
# id per message (a heartbeat's whole encode is about as long as `secrets.token_hex`).
_ID_PREFIX: Final = secrets.token_hex(6)
_ID_COUNTER: Final = itertools.count(1)


def new_message_id() -> str:
    """Return a message id no other message of this process has."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


MessageId = Annotated[str, Meta(max_length=64, description="message id")]
Timestamp = Annotated[
    int, Meta(ge=0, le=INT64_MAX, description="sender's clock, ms since the epoch")
]
B = TypeVar("B")


class Envelope(Struct, Generic[B], frozen=True):
    """A message: version, kind, message id, sender's time (ms) and body. `Envelope[Hello]`
    is the whole message of kind hello, decoded and checked in one pass."""

    v: int
    kind: str
    id: MessageId
    ts: Timestamp
    body: B


_ENCODER: Final = msgspec.msgpack.Encoder()
# The slow path of `decode`, taken once the one-pass decode has refused a payload (or
# when the kind is not known up front): the envelope's fields, each left encoded until
# it is looked at, so that a bad version, kind, header or body each gets its own reason.
_FIELDS: Final = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_VERSION: Final = msgspec.msgpack.Decoder(int)
_KIND: Final = msgspec.msgpack.Decoder(str)
_ID: Final = msgspec.msgpack.Decoder(MessageId)
_TS: Final = msgspec.msgpack.Decoder(Timestamp)
_ENVELOPE_FIELDS: Final = frozenset(("v", "kind", "id", "ts", "body"))


_DECODERS: Final[dict[type[Any], msgspec.msgpack.Decoder[Any]]] = {}
_ENVELOPE_DECODERS: Final[dict[type[Any], msgspec.msgpack.Decoder[Envelope[Any]]]] = {}


def _decoder(cls: type[Any]) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of body type `cls` (made once: making one compiles the type)."""
    if (found := _DECODERS.get(cls)) is None:
        found = _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
    return found


def _envelope_decoder(cls: type[Any]) -> msgspec.msgpack.Decoder[Envelope[Any]]:
    """The decoder of a whole message whose body is of type `cls`."""
    if (found := _ENVELOPE_DECODERS.get(cls)) is None:
        found = msgspec.msgpack.Decoder(Envelope[cls])  # type: ignore[valid-type]
        _ENVELOPE_DECODERS[cls] = found
    return found


def encode(kind: str, body: Body, *, ts_ms: int | None = None, msg_id: str | None = None) -> bytes:
    """Encode `body` as a versioned envelope of `kind`, checked as `decode` will check it;
    raise `EncodeError` if it breaks the contract."""
    cls = _ALL_KINDS.get(kind)
    if cls is None or type(body) is not cls:
        expected = cls.__name__ if cls else "none: unknown kind"
        raise EncodeError(f"a {type(body).__name__} sent as {kind!r} (its type: {expected})")
    envelope = Envelope(
        v=VERSION,
        kind=kind,
        id=msg_id or new_message_id(),
        ts=ts_ms if ts_ms is not None else int(time.time() * 1000),
        body=body,
    )
    packed = _ENCODER.encode(envelope)
    # Making a Struct checks nothing: decoding what is about to be sent applies every
    # check `decode` will (msgspec's decoder is the fastest validator it has).
    try:
        decode(packed, kinds=_ALL_KINDS, expected_kind=kind, max_bytes=len(packed))
    except WireError as exc:
        raise EncodeError(f"{kind} message breaks the wire contract: {exc}") from exc
    return packed


def decode(
    payload: bytes,
    *,
    kinds: dict[str, type[Any]],
    expected_kind: str | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Envelope[Any]:
    """Decode and validate one payload; raise `WireError` saying what was wrong, and
    nothing else, whatever the bytes."""
    if len(payload) > max_bytes:
        raise WireError("oversized", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    if expected_kind in kinds:
        # One pass through msgspec's decoder does every check for a good message.
        try:
            envelope = _envelope_decoder(kinds[expected_kind]).decode(payload)
        except Exception:  # noqa: S110 - the slow path below says what was wrong
            pass
        else:
            if envelope.v == VERSION and envelope.kind == expected_kind:
                return envelope
    try:
        return _decode(payload, kinds, expected_kind)
    except WireError:
        raise
    except RecursionError as exc:
        raise WireError("malformed", "payload nests too deep") from exc
    except Exception as exc:  # a case the checks above missed: still only a refusal
        text = schema.quote(str(exc))
        raise WireError("malformed", f"undecodable: {type(exc).__name__}: {text}") from exc


def _decode(
    payload: bytes, kinds: dict[str, type[Any]], expected_kind: str | None
) -> Envelope[Any]:
    """Decode field by field, to say exactly what was wrong."""
    try:
        fields = _FIELDS.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError("malformed", f"not a msgpack map: {schema.quote(str(exc))}") from exc
    try:
        version = _VERSION.decode(fields["v"])
    except (KeyError, msgspec.ValidationError):
        version = None
    if version != VERSION:
        shown = msgspec.msgpack.decode(fields["v"]) if "v" in fields else None
        raise WireError(
            "version", f"unsupported envelope version {schema.quote(shown)} (want {VERSION})"
        )
    try:
        kind = _KIND.decode(fields["kind"])
    except (KeyError, msgspec.ValidationError):
        kind = None
    if expected_kind is not None and kind != expected_kind:
        raise WireError("kind", f"envelope kind {schema.quote(kind)} does not match topic kind")
    if kind is None or kind not in kinds:
        raise WireError("kind", f"unknown message kind {schema.quote(kind)}")
    if not _ENVELOPE_FIELDS.issuperset(fields):
        names = sorted(schema.quote(k, 40) for k in set(fields) - _ENVELOPE_FIELDS)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise WireError("schema", f"envelope has unknown fields: {', '.join(names[:3])}{more}")
    msg_id = _field(_ID, fields, "id", "envelope")
    ts = _field(_TS, fields, "ts", "envelope")
    body = _field(_decoder(kinds[kind]), fields, "body", kind)
    return Envelope(v=version, kind=kind, id=msg_id, ts=ts, body=body)


def _field(
    decoder: msgspec.msgpack.Decoder[Any], fields: dict[str, msgspec.Raw], name: str, where: str
) -> Any:
    """Decode one envelope field, refusing it with its path."""
    raw = fields.get(name)
    if raw is None:
        raise WireError("schema", f"{where}.{name}: required key is missing")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise WireError("schema", str(schema.error_of(exc, f"{where}.{name}"))) from exc


def _deeper_than(value: list[Any] | dict[str, Any], limit: int) -> bool:
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
