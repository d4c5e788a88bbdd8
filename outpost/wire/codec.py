"""The envelope every payload is, ``{v, kind, id, ts, body}`` in msgpack, and its codec.

`decode` refuses a payload that is too large, not msgpack, nested too deep, of an
unknown version or kind, or whose body does not match its declaration, with a
`WireError` whose `reason` is a short stable code, and raises nothing else whatever the
bytes. `encode` applies the same checks to what it is about to send."""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Annotated, Any, Final, Generic, TypeVar

import msgspec
from msgspec import Meta

from outpost import schema
from outpost.schema import INT64_MAX, Struct
from outpost.wire.contract import MAX_PAYLOAD_BYTES, VERSION, EncodeError, WireError
from outpost.wire.down import (
    Ack,
    AgentOffer,
    Cancel,
    ModelReleases,
    SignedPolicy,
    Tasks,
    Welcome,
)
from outpost.wire.up import Heartbeat, Hello, ModelState, Packed, Records, Status, TaskState

Body = (
    Hello
    | Heartbeat
    | Status
    | Records
    | Packed
    | Ack
    | Tasks
    | Cancel
    | TaskState
    | SignedPolicy
    | ModelReleases
    | AgentOffer
    | ModelState
    | Welcome
)


# kind -> body type, for each direction. Both sides refuse kinds not listed here.
UP_KINDS: Final[dict[str, type[Any]]] = {
    "hello": Hello,
    "heartbeat": Heartbeat,
    "status": Status,
    "records": Records,
    "task_state": TaskState,
    "model_state": ModelState,
    "packed": Packed,
}
DOWN_KINDS: Final[dict[str, type[Any]]] = {
    "ack": Ack,
    "tasks": Tasks,
    "cancel": Cancel,
    "policy": SignedPolicy,
    "models": ModelReleases,
    "agent": AgentOffer,
    "welcome": Welcome,
}
_ALL_KINDS: Final = {**UP_KINDS, **DOWN_KINDS}
assert len(_ALL_KINDS) == len(UP_KINDS) + len(DOWN_KINDS), "a kind names one body type"


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


def decode_body(kind: str, raw: bytes, *, where: str) -> Any:
    """Decode and check a body of `kind` on its own, as `decode` checks it inside an
    envelope (what a `packed` message holds), naming paths from `where`; raise
    `WireError` and nothing else."""
    try:
        return _decoder(_ALL_KINDS[kind]).decode(raw)
    except msgspec.ValidationError as exc:
        raise WireError("schema", str(schema.error_of(exc, where))) from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise WireError(
            "malformed", f"{where}: not a {kind} body: {schema.quote(str(exc))}"
        ) from exc


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
