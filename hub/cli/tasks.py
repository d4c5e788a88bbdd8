"""`outpost-hub tasks`: submit (from a file or stdin, or one input given inline), list,
show and cancel tasks through the hub's API."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from typing import Any
from urllib.parse import quote

from hub.cli import jsontext, remote, tables

WAIT_EVERY_S = 0.2
ENDED = ("succeeded", "failed", "expired", "cancelled")


def submit(args: argparse.Namespace) -> int:
    """Submit the task(s) of a JSON file or stdin, or one built from --model/--input."""
    body = _body(args)

    async def send(client: remote.Client) -> int:
        ids = (await client.call("POST", "/api/v1/tasks", body=body))["ids"]
        if not args.wait:
            if args.json:
                remote.show_json({"ids": ids})
            else:
                print("\n".join(ids))
            return 0
        print(
            f"submitted {len(ids)} task(s); waiting for them to end (Ctrl-C stops the "
            "waiting, not the tasks)",
            file=sys.stderr,
            flush=True,
        )
        try:
            ended = await _wait(client, ids, args.timeout)
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C stops the waiting, not the tasks: say which they are, to follow them.
            print("\n".join(ids))
            print(
                f"\nstopped waiting; the {len(ids)} task(s) above go on (see one with "
                "`outpost-hub tasks show ID`)",
                file=sys.stderr,
            )
            return 130
        if args.json:
            remote.show_json(ended)
        else:
            print(await _render_list(client, ended))
        return 0 if all(t["state"] == "succeeded" for t in ended) else 1

    return remote.run(args, send)


def _body(args: argparse.Namespace) -> Any:
    if args.model is not None:
        if args.file is not None:
            raise ValueError("give a task file, or --model and --input, not both")
        body: dict[str, Any] = {"model": args.model, **_input(args)}
        if args.dtype:
            body["dtype"] = args.dtype
        if args.device:
            body["target"] = {"device": args.device}
        if args.wait_for_model:
            body["wait_for_model"] = True
        return body
    if args.input is not None or args.input_file is not None or args.dtype is not None:
        raise ValueError("--input, --input-file and --dtype go with --model, not with a task file")
    if args.file is None:
        raise ValueError("give a task file (- for stdin), or --model and --input")
    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read {args.file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"{args.file} is not JSON text (UTF-8): {exc}") from exc
    return jsontext.parse(text, args.file)


def _input(args: argparse.Namespace) -> dict[str, Any]:
    """The task's input field: --input's JSON as it is, or --input-file's bytes in base64."""
    if args.input is not None and args.input_file is not None:
        raise ValueError("give --input or --input-file, not both")
    if args.input_file is not None:
        try:
            with open(args.input_file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read --input-file {args.input_file}: {exc.strerror}") from exc
        if not data:
            raise ValueError(f"--input-file {args.input_file} is empty: it holds no input")
        return {"input_b64": base64.b64encode(data).decode("ascii")}
    if args.input is None:
        raise ValueError("--model needs --input (the model input as JSON) or --input-file")
    return {"input": jsontext.parse(args.input, "--input")}


async def _wait(client: remote.Client, ids: list[str], within_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    done: dict[str, dict[str, Any]] = {}
    while True:
        for task_id in ids:
            if task_id not in done:
                task = await client.get(f"/api/v1/tasks/{quote(task_id, safe='')}")
                if task["state"] in ENDED:
                    done[task_id] = task
        if len(done) == len(ids):
            return [done[i] for i in ids]
        if time.monotonic() > deadline:
            waiting = [i for i in ids if i not in done]
            raise remote.RemoteError(
                f"{len(waiting)} task(s) not ended after {within_s:g} s (still running on the "
                f"hub): {', '.join(waiting[:5])}"
            )
        await asyncio.sleep(WAIT_EVERY_S)


def list_tasks(args: argparse.Namespace) -> int:
    async def listed(client: remote.Client) -> int:
        query = {"limit": str(args.limit), "order": "newest"}
        for key in ("state", "device", "model"):
            if getattr(args, key):
                query[key] = getattr(args, key)
        page = await client.get("/api/v1/tasks", **query)
        if not page["items"] and args.device:
            # None for a device, or no device of that name (a typo): the registry says
            # which, as every other command naming a device does (404 "no device ...").
            await client.get(f"/api/v1/devices/{quote(args.device, safe='')}")
        if args.json:
            remote.show_json(page["items"])
        else:
            print(await _render_list(client, page["items"]))
            if page.get("next_cursor"):
                print(f"(the newest {args.limit} shown: narrow with --state, --model, --device)")
        return 0

    return remote.run(args, listed)


async def _render_list(client: remote.Client, tasks: list[dict[str, Any]]) -> str:
    names = await client.device_names() if any(t["device"] for t in tasks) else {}
    rows = []
    for t in tasks:
        device = names.get(t["device"], t["device"]) if t["device"] else "-"
        if t["state"] == "succeeded" and t["result"]:
            r = t["result"]
            why = f"{r.get('label')} ({r.get('confidence', 0):.2f})"
        else:
            why = t.get("waiting") or t["error"] or ""
        rows.append(
            (
                t["id"],
                t["state"],
                t["model"],
                device,
                str(t["attempt"]),
                tables.ago(t["created_at"]),
                why,
            )
        )
    header = ("TASK", "STATE", "MODEL", "DEVICE", "ATTEMPTS", "SUBMITTED", "RESULT / WHY")
    return tables.table(header, rows)


def show_task(args: argparse.Namespace) -> int:
    async def show(client: remote.Client) -> int:
        task = await client.get(f"/api/v1/tasks/{quote(args.id, safe='')}")
        if args.json:
            remote.show_json(task)
            return 0
        names = await client.device_names() if task["device"] else {}
        device = names.get(task["device"], task["device"]) if task["device"] else "-"
        target = json.dumps(task["target"]) if task["target"] else "any"
        lines = [
            f"{task['id']}: {task['state']}"
            + (f" ({task['waiting']})" if task.get("waiting") else ""),
            f"  model     {task['model']} {task['version'] or '(active version)'}, {task['dtype']}",
            f"  device    {device}; attempt {task['attempt']}; target {target}",
            f"  submitted {tables.when(task['created_at'])} by {task['submitted_by']}; "
            f"deadline {tables.when(task['deadline'])}",
        ]
        if task["result"]:
            lines.append(f"  result    {json.dumps(task['result'])[:500]}")
        if task["error"]:
            lines.append(f"  error     {task['error']}")
        if task["events"]:
            rows = [
                (
                    "  " + tables.when(e["at"]),
                    e["state"],
                    names.get(e["device"] or "", e["device"] or "-"),
                    e["detail"],
                )
                for e in task["events"]
            ]
            lines.append(tables.table(("  WHEN", "STATE", "DEVICE", "DETAIL"), rows))
        print("\n".join(lines))
        return 0

    return remote.run(args, show)


def cancel_task(args: argparse.Namespace) -> int:
    async def cancel(client: remote.Client) -> int:
        task = await client.call("POST", f"/api/v1/tasks/{quote(args.id, safe='')}/cancel")
        if args.json:
            remote.show_json(task)
        else:
            print(f"{task['id']} cancelled")
        return 0

    return remote.run(args, cancel)
