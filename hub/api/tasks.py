"""Task routes: submit (one or a batch), read, list and cancel."""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgpack
from aiohttp import web

from hub import labels
from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.models import TaskBatchIn, TaskIds, TaskIn, TaskOut
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.store import NewTask
from hub.store.tasks import TERMINAL
from outpost import schema

STATES = ("queued", "assigned", "accepted", "running", *TERMINAL)


def new_task_id() -> str:
    return f"tsk-{secrets.token_hex(8)}"


def routes(ctx: ApiContext) -> list[Route]:
    config = ctx.config

    async def submit(request: web.Request) -> web.Response:
        data = await params.json_value(request, config.api_max_task_body_bytes)
        batch = isinstance(data, dict) and "tasks" in data
        try:
            items = (
                schema.load(TaskBatchIn, data, "body").tasks
                if batch
                else [schema.load(TaskIn, data, "body")]
            )
        except schema.SchemaError as exc:
            raise bad_field(exc.path, str(exc)) from exc
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
        await ctx.store.create_tasks(new, now=now)
        ctx.dispatcher.wake()
        request[AUDIT_DETAIL] = {"tasks": len(new), "first": new[0].task_id}
        return web.json_response(schema.dump(TaskIds([t.task_id for t in new])), status=202)

    async def get_task(request: web.Request) -> web.Response:
        task = await ctx.store.task(request.match_info["id"])
        if task is None:
            raise ApiError(404, "not_found", f"no task {request.match_info['id']!r}")
        return web.json_response(schema.dump(TaskOut.of(task)))

    async def list_tasks(request: web.Request) -> web.Response:
        size = params.limit(request)
        state = request.query.get("state")
        if state is not None and state not in STATES:
            raise bad_field("query.state", f"state must be one of {', '.join(STATES)}")
        found = await ctx.store.tasks_page(
            state=state,
            device_id=request.query.get("device"),
            model=request.query.get("model"),
            after=params.decode_cursor(request, int),
            limit=size + 1,
        )
        page = params.page(found, size, lambda t: schema.dump(TaskOut.of(t)), lambda t: t.seq)
        return web.json_response(page)

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
        return web.json_response(schema.dump(TaskOut.of(task)))

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
            errors=(400, 413),
        ),
        Route(
            "GET",
            "/api/v1/tasks",
            "viewer",
            list_tasks,
            "List tasks, oldest first",
            "tasks",
            response=TaskOut,
            paginated=True,
            params=(
                Param("state", "query", f"only tasks in this state ({', '.join(STATES)})"),
                Param("device", "query", "only tasks of this device (current or last attempt)"),
                Param("model", "query", "only tasks of this model"),
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
        packed = msgpack.packb(item.input, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:
        raise bad_field(f"{where}.input", f"input cannot be encoded: {exc}") from exc
    if len(packed) > config.task_max_input_bytes:
        raise bad_field(
            f"{where}.input",
            f"input is {len(packed)} bytes packed, over the limit of {config.task_max_input_bytes}",
        )
    target: dict[str, Any] = {}
    if item.target.device and item.target.selector:
        raise bad_field(f"{where}.target", "give a device or a selector, not both")
    if item.target.device:
        if await ctx.store.device(item.target.device) is None:
            raise bad_field(f"{where}.target.device", f"no device {item.target.device!r}")
        target = {"device": item.target.device}
    elif item.target.selector:
        try:
            labels.check(item.target.selector, f"{where}.target.selector")
        except ValueError as exc:
            raise bad_field(f"{where}.target.selector", str(exc)) from exc
        target = {"selector": item.target.selector}
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
