"""What the local API makes of a request's body: its format, its size against what the
model's input could need, the decoded map, and an inference request's fields.

A body is decoded into Python objects about ten times its size (a 4 MiB JSON list of
floats: a million float objects, 35 to 45 MiB), so an inference's or an explanation's
body is first held against what the model's input could take (`input_body_limit`) and
refused unread past it: a few such bodies would otherwise take more memory than the
agent's unit allows, only to be refused for their shape.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgspec

from edge.localhttp import JSON, MSGPACK, Request

INFER_KEYS = frozenset({"input", "dtype", "context"})
MAX_CONTEXT_BYTES = 4096
# Bodies above this are decoded on a worker thread: a 4 MiB JSON document takes tens of
# milliseconds to parse, long enough to hold up every other request and the MQTT session.
DECODE_INLINE_BYTES = 64 * 1024
# What one value of a model's input may take in a body, at most: a float written out in
# full ("-1.2345678901234567e-308", 24 characters), its separator, and the brackets and
# indentation of a pretty-printed nesting (about 45 bytes a value at an indent of 4).
BYTES_PER_VALUE = 64
# The rest of a body: its keys, a context (MAX_CONTEXT_BYTES packed, more as JSON with
# escapes), an explanation's fields.
BODY_SLACK_BYTES = 64 * 1024


class BadRequest(Exception):
    """A body the local API refuses: its status, code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def input_body_limit(shape: list[int]) -> int:
    """The largest body an input of `shape` (with the request's other fields) may need."""
    return math.prod(shape) * BYTES_PER_VALUE + BODY_SLACK_BYTES


def check_input_body(request: Request, name: str, shape: list[int]) -> None:
    """Refuse (413) a body larger than any input of model `name` could need, unread."""
    if len(request.body) <= BODY_SLACK_BYTES:  # within any model's limit
        return
    limit = input_body_limit(shape)
    if len(request.body) > limit:
        raise BadRequest(
            413,
            "too_large",
            f"body is {len(request.body)} bytes; an input of {name} (shape {shape}, "
            f"{math.prod(shape)} values) takes at most {limit} ({BYTES_PER_VALUE} a value "
            f"and {BODY_SLACK_BYTES} for the rest)",
        )


def body_of(request: Request) -> bytes:
    """The request's body, or a `BadRequest` when it is neither JSON nor msgpack."""
    kind = request.content_type
    if kind not in (JSON, MSGPACK):
        raise BadRequest(415, "unsupported_media_type", f"send {JSON} or {MSGPACK}, not {kind}")
    return request.body


async def decoded(raw: bytes, kind: str) -> dict[str, Any]:
    """A body as a map, decoded on a worker thread when large; or a `BadRequest`."""
    if len(raw) > DECODE_INLINE_BYTES:
        return _as_map(await asyncio.to_thread(_decode_checked, raw, kind))
    return _as_map(_decode_checked(raw, kind))


def _decode_checked(raw: bytes, kind: str) -> Any:
    try:
        return _decode(raw, kind)
    except (ValueError, TypeError) as exc:
        raise BadRequest(400, "bad_body", f"body is not valid {kind}: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest(400, "bad_body", "body is nested too deeply") from exc


def _as_map(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequest(400, "bad_body", "body must be a map")
    return data


def _decode(raw: bytes, kind: str) -> Any:
    if kind == MSGPACK:
        return msgspec.msgpack.decode(raw)
    # msgspec, not the json module: 15 times faster on a small input, 4 times on a 96x96
    # image's lists; like json, a ValueError when malformed and a RecursionError when
    # nested too deeply; unlike it, NaN and Infinity, which are not JSON, are refused.
    return msgspec.json.decode(raw)


class _TensorBody(msgspec.Struct, forbid_unknown_fields=True):
    """An inference request whose input is the tensor's bytes (see `tensor_request`)."""

    input: bytes
    dtype: str = "float32"
    context: dict[str, Any] | None = None


_TENSOR_BODY = msgspec.msgpack.Decoder(_TensorBody)


def tensor_request(raw: bytes) -> tuple[Any, str, dict[str, Any] | None] | None:
    """A msgpack inference body whose input is the tensor's bytes (a camera frame, as the
    docs advise), decoded here whatever its size: that is a copy of the bytes,
    microseconds, where a hop to a thread and back costs 70 to 120 µs (the bench's no-op
    round trip). None for any other body: the general path says what is wrong with it."""
    try:
        tensor = _TENSOR_BODY.decode(raw)
    except msgspec.DecodeError:
        return None
    return infer_request(msgspec.structs.asdict(tensor))


def infer_request(data: dict[str, Any]) -> tuple[Any, str, dict[str, Any] | None]:
    """An inference's input, dtype and context from its body, or a `BadRequest`."""
    unknown = sorted(str(k) for k in data.keys() - INFER_KEYS)
    if unknown:
        raise BadRequest(
            400, "bad_field", f"body.{unknown[0]}: unknown key (known: context, dtype, input)"
        )
    if "input" not in data:
        raise BadRequest(400, "bad_field", "body.input is required: the model's input tensor")
    dtype = data.get("dtype", "float32")
    if not isinstance(dtype, str):
        raise BadRequest(400, "bad_dtype", "body.dtype must be a string: float32 or int8")
    context = data.get("context")
    if context is not None and (
        not isinstance(context, dict) or _packed_size(context) > MAX_CONTEXT_BYTES
    ):
        raise BadRequest(
            400, "bad_field", f"body.context must be a map of at most {MAX_CONTEXT_BYTES} bytes"
        )
    return data["input"], dtype, context


def _packed_size(value: Any) -> int:
    """Its msgpack size; a value msgpack cannot hold (a huge integer) counts as too big."""
    try:
        return len(msgspec.msgpack.encode(value))
    except (OverflowError, ValueError, TypeError):
        return MAX_CONTEXT_BYTES + 1
