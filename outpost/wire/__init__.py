"""The wire contract between agent and hub: topics, the msgpack envelope, message bodies.
Everything is imported from here (`from outpost import wire`; `wire.Hello`).

Topics (`topics`): ``outpost/v1/dev/{device_id}/up/{kind}`` (device to hub, the bodies
in `up`) and ``outpost/v1/dev/{device_id}/down/{kind}`` (hub to device, in `down`). The
broker's ACL lets a device write only its own ``up/#`` and read only its own ``down/#``.

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

from outpost.wire.codec import (
    DOWN_KINDS,
    UP_KINDS,
    Body,
    Envelope,
    MessageId,
    Timestamp,
    decode,
    decode_body,
    encode,
    new_message_id,
)
from outpost.wire.contract import (
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    MAX_TASK_BATCH,
    TASK_ID_PATTERN,
    VERSION,
    Attempt,
    EncodeError,
    TaskId,
    WireError,
    clip,
)
from outpost.wire.down import (
    MAX_INPUT_DEPTH,
    MAX_RELEASES,
    Ack,
    AgentOffer,
    AgentRelease,
    Assignment,
    Cancel,
    ModelReleases,
    OfferSeal,
    Signature,
    SignedPolicy,
    SignedRelease,
    Tasks,
    Welcome,
)
from outpost.wire.topics import (
    DEVICE_ID_PATTERN,
    TOPIC_PREFIX,
    UP_WILDCARD,
    down_topic,
    parse_topic,
    up_topic,
)
from outpost.wire.up import (
    MAX_BATCH_RECORDS,
    MAX_ENCODINGS,
    MAX_MODELS,
    MAX_RECORD_BYTES,
    STREAMS,
    Capabilities,
    ConnId,
    DeployState,
    EncodingName,
    Heartbeat,
    Hello,
    Interval,
    Load,
    ModelInfo,
    ModelState,
    Packed,
    Percent,
    PolicyReport,
    Records,
    Seq,
    Status,
    StoreReport,
    Stream,
    StreamFill,
    TaskLoad,
    TaskState,
    TaskUpdate,
    record_problem,
)

__all__ = [
    "DEVICE_ID_PATTERN",
    "DOWN_KINDS",
    "MAX_BATCH_RECORDS",
    "MAX_DEPTH",
    "MAX_ENCODINGS",
    "MAX_INPUT_DEPTH",
    "MAX_MODELS",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_RELEASES",
    "MAX_TASK_BATCH",
    "STREAMS",
    "TASK_ID_PATTERN",
    "TOPIC_PREFIX",
    "UP_KINDS",
    "UP_WILDCARD",
    "VERSION",
    "Ack",
    "AgentOffer",
    "AgentRelease",
    "Assignment",
    "Attempt",
    "Body",
    "Cancel",
    "Capabilities",
    "ConnId",
    "DeployState",
    "EncodeError",
    "EncodingName",
    "Envelope",
    "Heartbeat",
    "Hello",
    "Interval",
    "Load",
    "MessageId",
    "ModelInfo",
    "ModelReleases",
    "ModelState",
    "OfferSeal",
    "Packed",
    "Percent",
    "PolicyReport",
    "Records",
    "Seq",
    "Signature",
    "SignedPolicy",
    "SignedRelease",
    "Status",
    "StoreReport",
    "Stream",
    "StreamFill",
    "TaskId",
    "TaskLoad",
    "TaskState",
    "TaskUpdate",
    "Tasks",
    "Timestamp",
    "Welcome",
    "WireError",
    "clip",
    "decode",
    "decode_body",
    "down_topic",
    "encode",
    "new_message_id",
    "parse_topic",
    "record_problem",
    "up_topic",
]
