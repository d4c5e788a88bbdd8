"""What a device sends the hub (`up/{kind}`): hello, heartbeat, status, records, task
and model states. Each body is declared once, with its bounds: msgspec checks them as it
decodes, and `encode` checks what it sends the same way."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from outpost import schema
from outpost.schema import FINITE, INT64_MAX, INT64_MIN, Struct
from outpost.wire.contract import MAX_PAYLOAD_BYTES, MAX_TASK_BATCH, Attempt, TaskId

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
# A batch encoding's name (see `outpost.wire.packing`). Any name is taken in a hello, so
# that a hub which knows fewer encodings than the device still reads its hello (and
# accepts none of the names it does not know).
EncodingName = Annotated[str, Meta(max_length=32, description="a batch encoding, e.g. zstd")]
MAX_ENCODINGS: Final = 8


class Hello(Struct, frozen=True, omit_defaults=True):
    """Sent on every connection: who the device is and what it can do.

    Encoded without the fields left at their default, so that a device with compression
    off sends what a hub from before `compression` reads (unknown keys are refused)."""

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
    compression: Annotated[
        list[EncodingName],
        Meta(
            max_length=MAX_ENCODINGS,
            description="batch encodings it can send, preferred first (empty: plain records "
            "only); the hub answers with `welcome`",
        ),
    ] = []
    store: Annotated[
        str,
        Meta(
            max_length=64,
            description="the id of the agent's store, sent while a stream is not yet "
            "numbered after the hub's mark: if the hub took that store's numbering from "
            "a courier bundle, its ack says so (`numbered_by`)",
        ),
    ] = ""
    sealed_offers: Annotated[
        bool,
        Meta(
            description="it takes only sealed offers of model releases once it has had "
            "one (`models.seal`): the hub seals every offer it makes the device"
        ),
    ] = False


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
# The most one record may take, packed: alone in a batch, with the batch's own fields, it
# still fits one message. A larger one could never be sent, and would hold its stream up.
MAX_RECORD_BYTES: Final = MAX_PAYLOAD_BYTES - 1024


def record_problem(packed: bytes) -> str | None:
    """Why a stored record's body (msgpack) could never travel in a batch; None if it
    can: a map with string keys at the top, at most `MAX_RECORD_BYTES`."""
    if len(packed) > MAX_RECORD_BYTES:
        return f"{len(packed):,} bytes packed, over the {MAX_RECORD_BYTES:,} a record may hold"
    try:
        _RECORD_BODY.decode(packed)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        return f"not a map with text keys ({exc})"
    return None


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
        # Finite: SQLite stores a NaN as NULL, which `ts NOT NULL` refuses, so a batch
        # holding one failed at every resend and its stream never moved (PostgreSQL
        # stored it: the back-ends disagreed).
        list[Annotated[float, Meta(ge=-FINITE, le=FINITE)]],
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


class Packed(Struct, frozen=True):
    """The body of a `records` message compressed with `encoding` (`outpost.wire.packing`),
    sent instead of it once the hub accepted that encoding on this connection (`welcome`).

    The hub refuses an encoding it did not accept, a frame that is corrupt, truncated or
    followed by anything, and one that declares or decompresses to more than its payload
    limit (it stops there, before holding more); what it holds is then decoded and
    checked exactly as a `records` body is."""

    encoding: EncodingName
    data: Annotated[
        bytes, Meta(description="the records body (msgpack) in one frame that declares its size")
    ]


class TaskUpdate(Struct, frozen=True):
    """What the device did with an assignment (results travel on the results stream)."""

    task_id: TaskId
    attempt: Attempt
    state: Annotated[Literal["accepted", "rejected", "running"], Meta(description="the new state")]
    reason: Annotated[str, Meta(max_length=256, description="why it was rejected")] = ""


class TaskState(Struct, frozen=True):
    """Task updates, batched."""

    updates: Annotated[list[TaskUpdate], Meta(max_length=MAX_TASK_BATCH, description="the updates")]


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
