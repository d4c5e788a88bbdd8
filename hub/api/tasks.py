"""Task routes: submit (one or a batch), read, list and cancel."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, AUDITED, PRINCIPAL, Param, Route, audit_entry
from hub.fleet import labels
from hub.store import NewTask, Task
from hub.store.tasks import MAX_DEADLINE_S, TERMINAL
from outpost import wire
from outpost.schema import Struct

STATES = ("queued", "assigned", "accepted", "running", *TERMINAL)


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
    input: Annotated[Any, Meta(description="the model input: nested lists of numbers")]
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


class TaskIds(Struct, frozen=True):
    """The ids given to submitted tasks, in order."""

    ids: Annotated[list[str], Meta(description="task ids")]


class TaskEventOut(Struct, frozen=True):
    """One thing that happened to a task."""

    at: Annotated[float, Meta(description="epoch seconds")]
    state: Annotated[str, Meta(description="the state entered, or late / rejected / lapsed")]
    device: Annotated[str | None, Meta(description="the device concerned")]
    attempt: Annotated[int, Meta(description="the attempt concerned")]
    detail: Annotated[str, Meta(description="why")]


class TaskOut(Struct, frozen=True):
    """A task and what became of it."""

    id: Annotated[str, Meta(description="task id")]
    state: Annotated[
        str,
        Meta(
            description="queued, assigned, accepted, running, succeeded, failed, expired or "
            "cancelled"
        ),
    ]
    model: Annotated[str, Meta(description="model name")]
    version: Annotated[str, Meta(description="model version asked for (empty: any)")]
    dtype: Annotated[str, Meta(description="float32 or int8")]
    priority: Annotated[int, Meta(description="0 to 9")]
    deadline: Annotated[float, Meta(description="expiry, epoch seconds")]
    lease_s: Annotated[float, Meta(description="lease length, seconds")]
    target: Annotated[dict[str, Any], Meta(description="device or selector, or empty for any")]
    created_at: Annotated[float, Meta(description="submission time, epoch seconds")]
    updated_at: Annotated[float, Meta(description="last change, epoch seconds")]
    attempt: Annotated[int, Meta(description="assignments so far (the current fencing token)")]
    device: Annotated[str | None, Meta(description="the device of the current or last attempt")]
    lease_expires: Annotated[float | None, Meta(description="end of the current lease")]
    excluded: Annotated[list[str], Meta(description="devices that rejected or lost it")]
    result: Annotated[dict[str, Any] | None, Meta(description="label, confidence, scores, latency")]
    error: Annotated[str, Meta(description="why it failed, expired or was cancelled")]
    finished_at: Annotated[float | None, Meta(description="when it ended, epoch seconds")]
    submitted_by: Annotated[str, Meta(description="subject of the token that submitted it")]
    input_bytes: Annotated[int, Meta(description="size of its input (msgpack)")]
    events: Annotated[
        list[TaskEventOut],
        Meta(description="every transition, rejection, lapse and late result (single reads only)"),
    ]
    waiting: Annotated[
        str,
        Meta(
            description="why a queued task waits (no online device has the model, all "
            "eligible devices are full, excluded after rejection by ...); empty otherwise"
        ),
    ] = ""

    @classmethod
    def of(cls, t: Task, waiting: str = "") -> TaskOut:
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
            waiting=waiting,
        )


def new_task_id() -> str:
    return f"tsk-{secrets.token_hex(8)}"


def routes(ctx: ApiContext) -> list[Route]:
    config = ctx.config

    async def submit(request: web.Request) -> web.Response:
        raw = await params.read(request, config.api_max_task_body_bytes)
        batch = params.is_object_with(raw, "tasks")
        items = params.decode(TaskBatchIn, raw).tasks if batch else [params.decode(TaskIn, raw)]
        if not items or len(items) > config.task_max_batch:
            raise bad_field(
                "body.tasks", f"submit 1 to {config.task_max_batch} tasks, got {len(items)}"
            )
        now = time.time()
        subject = request[PRINCIPAL].subject
        new = [
            await _checked(ctx, item, f"body.tasks[{i}]" if batch else "body", now, subject)
            for i, item in enumerate(items)
        ]
        request[AUDIT_DETAIL] = {"tasks": len(new), "first": new[0].task_id}
        # The entry goes with the tasks' commit. Cancelled meanwhile (the hub stopping),
        # whether that commit happened is not known here: the guard writes no entry of
        # its own, and the one committed with the tasks, if they were, is the record.
        request[AUDITED] = True
        try:
            await ctx.dispatcher.submit(new, now, audit_entry(request, 202))
        except Exception:  # rolled back or refused: the guard audits the failure
            request[AUDITED] = False
            raise
        return params.answer(TaskIds([t.task_id for t in new]), status=202)

    async def explained(tasks: list[Task]) -> list[TaskOut]:
        """The tasks as answered, each queued one with why it waits."""
        reasons = await ctx.waiting.explain(tasks)
        return [TaskOut.of(t, why) for t, why in zip(tasks, reasons, strict=True)]

    async def get_task(request: web.Request) -> web.Response:
        task = await ctx.store.task(request.match_info["id"])
        if task is None:
            raise ApiError(404, "not_found", f"no task {request.match_info['id']!r}")
        (out,) = await explained([task])
        return params.answer(out)

    async def list_tasks(request: web.Request) -> web.Response:
        size = params.limit(request)
        states = [s for given in request.query.getall("state", []) for s in given.split(",")]
        if unknown := [s for s in states if s not in STATES]:
            raise bad_field(
                "query.state", f"no state {unknown[0]!r}: states are {', '.join(STATES)}"
            )
        order = request.query.get("order", "oldest")
        if order not in ("oldest", "newest"):
            raise bad_field("query.order", f"order is oldest or newest, got {order!r}")
        device = request.query.get("device")
        if device is not None:  # a name, or an id (kept as given if no device has it now)
            device = await ctx.store.resolve_device(device) or device
        found = await ctx.store.tasks_page(
            states=states,
            device_id=device,
            model=request.query.get("model"),
            after=params.decode_cursor(request, int),
            limit=size + 1,
            newest_first=order == "newest",
        )
        page = params.page(found, size, lambda t: t, lambda t: t.seq)
        return params.answer(params.Page(await explained(page.items), page.next_cursor))

    async def cancel(request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        request[AUDIT_DETAIL] = {"task": task_id}
        before = await ctx.store.task(task_id)
        if before is None:
            raise ApiError(404, "not_found", f"no task {task_id!r}")
        if before.state in TERMINAL:
            raise ApiError(409, "conflict", f"task {task_id} already ended: {before.state}")
        task, holder = await ctx.store.cancel_task(task_id, now=time.time())
        assert task is not None
        if task.state != "cancelled":  # it ended between the two reads
            raise ApiError(409, "conflict", f"task {task_id} already ended: {task.state}")
        if holder:
            await ctx.dispatcher.send_cancel(holder, task_id, task.attempt)
        return params.answer(TaskOut.of(task))

    task_id = Param("id", "path", "task id")
    return [
        Route(
            "POST",
            "/api/v1/tasks",
            "operator",
            submit,
            "Submit a task, or a batch as {tasks: [...]}; answers at once with their ids",
            "tasks",
            action="task.submit",
            body=TaskIn,
            response=TaskIds,
            status=202,
            errors=(400, 413, 422),
        ),
        Route(
            "GET",
            "/api/v1/tasks",
            "viewer",
            list_tasks,
            "List tasks, oldest first",
            "tasks",
            response=params.Page[TaskOut],
            params=(
                Param(
                    "state",
                    "query",
                    f"only tasks in these states ({', '.join(STATES)}): repeat it, or "
                    "separate them with commas",
                    repeated=True,
                ),
                Param(
                    "device",
                    "query",
                    "only tasks of this device, by id or name (current or last attempt)",
                ),
                Param("model", "query", "only tasks of this model"),
                Param("order", "query", "oldest (submission order, the default) or newest first"),
            ),
        ),
        Route(
            "GET",
            "/api/v1/tasks/{id}",
            "viewer",
            get_task,
            "Read a task with its transitions and result",
            "tasks",
            response=TaskOut,
            params=(task_id,),
            errors=(404,),
        ),
        Route(
            "POST",
            "/api/v1/tasks/{id}/cancel",
            "operator",
            cancel,
            "Cancel a task that has not ended (its device is told)",
            "tasks",
            action="task.cancel",
            response=TaskOut,
            params=(task_id,),
            errors=(404, 409),
        ),
    ]


async def _checked(ctx: ApiContext, item: TaskIn, where: str, now: float, subject: str) -> NewTask:
    config = ctx.config
    if not isinstance(item.input, list) or not item.input:
        raise bad_field(f"{where}.input", "input must be a non-empty list of numbers")
    try:
        packed = msgspec.msgpack.encode(item.input)
    except (OverflowError, ValueError, TypeError) as exc:
        raise bad_field(f"{where}.input", f"input cannot be encoded: {exc}") from exc
    if len(packed) > config.task_max_input_bytes:
        raise bad_field(
            f"{where}.input",
            f"input is {len(packed)} bytes packed, over the limit of {config.task_max_input_bytes}",
        )
    problem = _input_problem(item.input)
    if problem is not None:  # else queued, to fail on a device (or not even be sent)
        raise bad_field(f"{where}.input", f"input {problem}")
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
    refusal = await ctx.input_shapes.refusal(item.model, item.version, _shape(item.input))
    if refusal is not None:
        raise bad_field(f"{where}.input", refusal)
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
