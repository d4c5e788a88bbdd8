"""What a submitted task must be: the request's schema, and the checks that turn one
into a task to queue (each refusal naming its field), before anything is written."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.fleet import labels
from hub.store import NewTask
from hub.store.tasks import MAX_DEADLINE_S
from outpost import tensorshape, wire
from outpost.schema import Struct


class TaskTarget(Struct, frozen=True):
    """Where a task may run: a named device, devices matching labels, or (both empty)
    any device that has the model."""

    device: Annotated[str, Meta(max_length=64, description="run on this device only")] = ""
    selector: Annotated[
        dict[str, str],
        Meta(
            max_length=32,
            description="run on a device carrying all these labels (and the model)",
        ),
    ] = {}


class TaskIn(Struct, frozen=True):
    """One task to run."""

    model: Annotated[str, Meta(max_length=64, description="model name")]
    input: Annotated[
        Any,
        Meta(description="the model input: nested lists of numbers (or give input_b64)"),
    ] = None
    input_b64: Annotated[
        str,
        Meta(
            description="the model input as the tensor's bytes in C order, base64: "
            "float32 little-endian, or int8 (dtype); instead of input"
        ),
    ] = ""
    version: Annotated[
        str, Meta(max_length=32, description="model version; empty: the active one")
    ] = ""
    dtype: Annotated[
        Literal["float32", "int8"],
        Meta(description="float32: real values, quantized on the device; int8: quantized"),
    ] = "float32"
    priority: Annotated[int, Meta(ge=0, le=9, description="0 (lowest) to 9 (highest)")] = 5
    deadline_s: (
        Annotated[
            float,
            Meta(
                ge=0.1,
                le=MAX_DEADLINE_S,
                description="seconds from now until it expires (default: the hub's)",
            ),
        ]
        | None
    ) = None
    lease_s: (
        Annotated[
            float,
            Meta(
                ge=0.1,
                le=7 * 86400,
                description="seconds a device has to finish it (default: the hub's)",
            ),
        ]
        | None
    ) = None
    target: Annotated[TaskTarget, Meta(description="where it may run (default: any)")] = (
        msgspec.field(default_factory=TaskTarget)
    )
    wait_for_model: Annotated[
        bool,
        Meta(
            description="queue it even if no device has the model yet (one is being "
            "enrolled or rolled out); otherwise such a task is refused with 422"
        ),
    ] = False


class TaskBatchIn(Struct, frozen=True):
    """Several tasks at once."""

    tasks: Annotated[list[TaskIn], Meta(max_length=100_000, description="the tasks")]


def new_task_id() -> str:
    return f"tsk-{secrets.token_hex(8)}"


async def checked(ctx: ApiContext, item: TaskIn, where: str, now: float, subject: str) -> NewTask:
    config = ctx.config
    packed, found, field = _input(item, where, config.task_max_input_bytes)
    target: dict[str, Any] = {}
    if item.target.device and item.target.selector:
        raise bad_field(f"{where}.target", "give a device or a selector, not both")
    if item.target.device:
        device = await ctx.store.find_device(item.target.device)
        if device is None:
            raise bad_field(f"{where}.target.device", f"no device {item.target.device!r}")
        if device.revoked_at is not None:  # it would wait, queued, until its deadline
            raise bad_field(
                f"{where}.target.device", f"{item.target.device!r} is revoked: it runs no task"
            )
        target = {"device": device.device_id}
    elif item.target.selector:
        try:
            labels.check(item.target.selector, f"{where}.target.selector")
        except ValueError as exc:
            raise bad_field(f"{where}.target.selector", str(exc)) from exc
        target = {"selector": item.target.selector}
    if not item.wait_for_model and not await ctx.fleet_models.has(item.model, item.version):
        wanted = f"{item.model} {item.version}" if item.version else item.model
        has = await ctx.fleet_models.names()
        raise ApiError(
            422,
            "unknown_model",
            f"no enrolled device has the model {wanted}; the fleet has: "
            f"{'; '.join(has) or 'no models'} (set wait_for_model to queue it anyway)",
            field=f"{where}.model",
        )
    refusal = await ctx.input_shapes.refusal(item.model, item.version, found)
    if refusal is not None:
        raise bad_field(field, refusal)
    deadline_s = item.deadline_s if item.deadline_s is not None else config.task_default_deadline_s
    lease_s = item.lease_s if item.lease_s is not None else config.task_default_lease_s
    return NewTask(
        task_id=new_task_id(),
        model=item.model,
        version=item.version,
        input=packed,
        dtype=item.dtype,
        priority=item.priority,
        deadline=now + deadline_s,
        lease_s=lease_s,
        target=target,
        submitted_by=subject,
    )


def _input(item: TaskIn, where: str, max_bytes: int) -> tuple[bytes, tensorshape.Found, str]:
    """The input as it is stored and sent (msgpack: nested lists, or the tensor's bytes),
    what is known of its shape, and the field it came in; refused with that field named
    when it cannot be a model's input."""
    if item.input is not None and item.input_b64:
        raise bad_field(f"{where}.input", "give input or input_b64, not both")
    if item.input_b64:
        field = f"{where}.input_b64"
        value: Any = params.base64_bytes(item.input_b64, field)
        width = tensorshape.ITEM_BYTES[item.dtype]
        if not value or len(value) % width:
            raise bad_field(
                field,
                f"input_b64 holds {len(value)} bytes: not a whole number of {item.dtype} "
                f"values ({width} bytes each), or none",
            )
        found: tensorshape.Found = tensorshape.Flat(len(value), item.dtype)
    else:
        field, value = f"{where}.input", item.input
        if not isinstance(value, list) or not value:
            raise bad_field(field, "input must be a non-empty list of numbers (or give input_b64)")
    try:
        packed = msgspec.msgpack.encode(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise bad_field(field, f"input cannot be encoded: {exc}") from exc
    if len(packed) > max_bytes:
        raise bad_field(
            field, f"input is {len(packed)} bytes packed, over the limit of {max_bytes}"
        )
    if isinstance(value, list):
        problem = _input_problem(value)
        if problem is not None:  # else queued, to fail on a device (or not even be sent)
            raise bad_field(field, f"input {problem}")
        found = _shape(value)  # rectangular, as just checked
    return packed, found, field


def _input_problem(value: list[Any]) -> str | None:
    """Why a task's input is not a rectangular array of numbers as nested lists, at most
    `wire.MAX_INPUT_DEPTH` deep (an assignment nested deeper cannot be sent); None if it
    is one. Walked a level at a time: no recursion for a caller to exhaust."""
    level: list[Any] = [value]
    for _ in range(wire.MAX_INPUT_DEPTH):
        if all(type(v) is list for v in level):
            lengths = {len(v) for v in level}
            if 0 in lengths:
                return "holds an empty list"
            if len(lengths) > 1:
                return "is not rectangular: lists at one level differ in length"
            level = [x for v in level for x in v]
        elif all(type(v) in (int, float) for v in level):
            return None
        else:
            return "must hold numbers only (no text, true/false, null or maps), in lists"
    return f"nests deeper than {wire.MAX_INPUT_DEPTH} levels"


def _shape(value: list[Any]) -> list[int]:
    """The shape of an input `_input_problem` found rectangular: the lengths along its
    first elements."""
    shape = []
    while type(value) is list:
        shape.append(len(value))
        value = value[0]
    return shape
