"""Task routes: submit (one or a batch), read, list and cancel."""

from __future__ import annotations

import time
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, AUDITED, PRINCIPAL, Param, Route, audit_entry
from hub.api.taskinput import TaskBatchIn, TaskIn, checked
from hub.store import Task
from hub.store.tasks import TERMINAL
from outpost.schema import Struct

STATES = ("queued", "assigned", "accepted", "running", *TERMINAL)


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
            await checked(ctx, item, f"body.tasks[{i}]" if batch else "body", now, subject)
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
