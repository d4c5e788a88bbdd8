"""`POST /api/v1/explain`: an explanation of one input, computed on the hub's runtime
with the same release devices run (edge/inference/explaining.py, the code behind the
agent's `POST /v1/explain/{model}`), and for an image a PNG of the input with the heat
map laid over it, for the dashboard and for people. The input is posted with the
request, or it is a stored result's: a flagged result carries the int8 input it
answered where the device's policy lets inputs leave it (inference.flagged_inputs),
and is explained with the release that answered it.

Operator role: an explanation costs the hub up to `budget` model calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, Route
from outpost.modelbundle import MANIFEST_FILE, SAMPLE_FILE
from outpost.schema import INT64_MAX

if TYPE_CHECKING:
    from edge.inference.runner import ModelRunner

MAX_BODY_BYTES = 4 << 20
RUNNERS_KEPT = 4  # loaded models kept between requests (the most recently used)
OVERLAY_ALPHA = 0.6  # the heat map's opacity where it is strongest


def routes(ctx: ApiContext) -> list[Route]:
    runners: OrderedDict[tuple[str, str], ModelRunner] = OrderedDict()
    lock = asyncio.Lock()

    async def runner_for(name: str, version: str) -> ModelRunner:
        async with lock:
            key = (name, version)
            if key in runners:
                runners.move_to_end(key)
                return runners[key]
            stored = await ctx.store.model(name, version)
            path = await ctx.models.local_file(name, version) if stored else None
            if stored is None or path is None:
                raise ApiError(404, "not_found", f"no model {name} {version} on this hub")
            runner = await asyncio.to_thread(_load, path.parent, stored.document)
            runners[key] = runner
            while len(runners) > RUNNERS_KEPT:
                _, old = runners.popitem(last=False)
                await asyncio.to_thread(old.close)
            return runner

    async def stored_input(data: dict[str, Any]) -> dict[str, Any]:
        """Fill `data` from a stored result (`device`, `seq`): its model, version and the
        input it carried (policy inference.flagged_inputs); say which result it was."""
        ref, seq = data.pop("device", None), data.pop("seq", None)
        if not isinstance(ref, str):
            raise bad_field("body.device", "a stored result needs the device's id or name")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= INT64_MAX:
            raise bad_field("body.seq", "a stored result needs its seq, an integer from 1")
        for key in ("model", "version", "input", "dtype"):
            if key in data:
                raise bad_field(f"body.{key}", "comes from the stored result, not the body")
        device_id = await ctx.store.resolve_device(ref)
        if device_id is None:
            raise ApiError(404, "not_found", f"no device {ref!r} (neither an id nor a name)")
        found = await ctx.store.records(device_id, "results", after=seq - 1, limit=1)
        if not found or found[0].seq != seq:
            raise ApiError(404, "not_found", f"no result {seq} of device {ref!r} on this hub")
        body = found[0].body
        carried = body.get("input") if isinstance(body, dict) else None
        if not isinstance(carried, dict) or not isinstance(carried.get("data"), bytes):
            raise ApiError(
                422,
                "no_input",
                f"result {seq} of device {ref!r} carries no input: the device's policy keeps "
                "inputs on the device unless inference.flagged_inputs is true",
            )
        if not isinstance(body.get("model"), str) or not isinstance(body.get("version"), str):
            raise ApiError(422, "no_input", f"result {seq} of device {ref!r} names no model")
        data.update(
            model=body["model"], version=body["version"], input=carried["data"], dtype="int8"
        )
        return {"device": device_id, "seq": seq}

    async def explain(request: web.Request) -> web.Response:
        from edge.inference.explaining import ExplainRequestError, explain_blocking
        from edge.inference.runner import ModelFault
        from edge.inference.tensors import InputError
        from outpost.explain import BudgetError

        # The whole body (content.read(n) gave what had arrived so far), checked as every
        # other body is: a NUL or a lone surrogate is a 400, not a 500 from the database.
        data = params.decode(dict[str, Any], await params.read(request, MAX_BODY_BYTES))
        stored = await stored_input(data) if "device" in data or "seq" in data else {}
        input_field = "body.input"
        if "input_b64" in data:  # the tensor's bytes, as a task's input may be
            if "input" in data:
                raise bad_field(input_field, "give input or input_b64, not both")
            input_field = "body.input_b64"
            data["input"] = params.base64_bytes(data.pop("input_b64"), input_field)
        name, version = data.pop("model", None), data.pop("version", None)
        if not isinstance(name, str):
            raise bad_field("body.model", "the model's name is required")
        if version is None:
            found = [m.version for m in await ctx.store.models() if m.name == name]
            if not found:
                raise ApiError(404, "not_found", f"no model {name!r}")
            version = max(found, key=_version_key)
        if not isinstance(version, str):
            raise bad_field("body.version", "must be a string")
        request[AUDIT_DETAIL] = {"model": name, "version": version, **stored}
        runner = await runner_for(name, version)
        try:
            answer = await asyncio.to_thread(explain_blocking, runner, data)
        except ExplainRequestError as exc:
            message = str(exc)
            raise bad_field(message.split(" ", 1)[0].rstrip(":"), message) from exc
        except BudgetError as exc:
            raise ApiError(422, "over_budget", str(exc)) from exc
        except InputError as exc:
            raise bad_field(input_field, f"{name}: {exc.message}") from exc
        except ModelFault as exc:
            raise ApiError(500, "model_fault", str(exc)) from exc
        if "patch" in answer:  # an image: the heat map over it
            png = await asyncio.to_thread(_overlay, runner, data, answer)
            answer["png"] = base64.b64encode(png).decode()
        if stored:
            answer["result"] = stored
        return web.json_response(answer)

    return [
        Route(
            "POST",
            "/api/v1/explain",
            "operator",
            explain,
            "Explain one input with a model release, on the hub: `model`, `version` (default "
            "the newest), then the fields of the agent's POST /v1/explain/{model} (input, "
            "dtype, target, method, patch, stride, window, budget), the input also as "
            "`input_b64` (the tensor's bytes in C order, base64); or, for a stored "
            "result that carried its input (policy inference.flagged_inputs), `device` and "
            "`seq` in place of model, version and input; for an image, `png` is the input "
            "with the heat map over it (base64)",
            "models",
            errors=(400, 404, 413, 422),
        )
    ]


def _load(folder: Path, document: bytes) -> ModelRunner:
    """A runner of the release in `folder`; a replica that holds only the model file
    (copied from the database) writes the manifest and sample from the release."""
    from edge.inference.runner import ModelRunner
    from edge.inference.runtime import choose_runtime
    from outpost.modelbundle import read_bundle

    if not (folder / MANIFEST_FILE).exists() or not (folder / SAMPLE_FILE).exists():
        body = msgspec.msgpack.decode(document)
        (folder / MANIFEST_FILE).write_text(json.dumps(body["manifest"]), encoding="utf-8")
        (folder / SAMPLE_FILE).write_text(json.dumps(body["sample"]), encoding="utf-8")
    runner = ModelRunner(
        read_bundle(folder), choose_runtime(), num_threads=1, interpreters=1, queue_limit=4
    )
    runner.load()
    return runner


def _overlay(runner: ModelRunner, data: dict[str, Any], answer: dict[str, Any]) -> bytes:
    """The image in gray, the heat map's positive part over it in translucent red
    (blocking)."""
    import numpy as np

    from edge.inference.tensors import prepare_input

    spec = runner.manifest.input
    q = prepare_input(data["input"], data.get("dtype", "float32"), spec).tensor[0]
    gray = q.astype(np.float32).mean(axis=2)
    gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-9)
    heat = np.clip(np.array(answer["attribution"], np.float32), 0, None)
    heat = (heat / max(float(heat.max()), 1e-9)) ** 2  # squared: the strongest stand out
    h, w = gray.shape
    stride, patch = answer["stride"], answer["patch"]
    cover = np.zeros((h, w), np.float32)
    for (i, j), v in np.ndenumerate(heat):
        r, c = i * stride, j * stride
        region = cover[r : r + patch, c : c + patch]
        np.maximum(region, v, out=region)
    cover *= OVERLAY_ALPHA  # the image stays visible under the strongest patch
    rgb = np.stack([gray * (1 - cover) + cover, gray * (1 - cover), gray * (1 - cover)], axis=2)
    return _png((rgb * 255).astype(np.uint8))


def _png(rgb: Any) -> bytes:
    """An RGB PNG from an [H, W, 3] uint8 array (the standard library's zlib only)."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )


def _version_key(version: str) -> tuple[int, ...]:
    """A version's numeric parts, for ordering (`1.10.0` after `1.9.2`)."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split("."))
