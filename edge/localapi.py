"""The agent's local API, for programs on the device, whether the hub is reachable or not.

Served on a Unix socket in the data folder (and on 127.0.0.1:PORT only when configured).
Bodies are JSON or msgpack (`Content-Type: application/msgpack`); answers come in the
request's format (or as `Accept` asks).

- `POST /v1/records/{stream}` answers only once the records are on disk: that answer is
  the agent's promise that the hub will get them exactly once.
- `POST /v1/infer/{model}` runs a model on a worker thread and answers with its label,
  confidence, scores and latency; the reporting rules decide whether it is recorded.
- `POST /v1/explain/{model}` says what in one input the model's answer rests on
  (edge/inference/explaining.py), within a budget of model calls.
- `GET /v1/models` and `GET /v1/status` say what the agent has and how it is doing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from edge.inference.service import InferenceService, ModelUnavailable, NotAllowed, UnknownModel
from edge.masking import Masker
from edge.store import STREAMS, AgentStore, StoreWriteError, StreamFullError

logger = logging.getLogger(__name__)

MAX_RECORDS = 1000
MSGPACK = "application/msgpack"
JSON = "application/json"
INFER_KEYS = frozenset({"input", "dtype", "context"})
MAX_CONTEXT_BYTES = 4096
# Bodies above this are decoded on a worker thread: a 4 MiB JSON document takes tens of
# milliseconds to parse, long enough to hold up every other request and the MQTT session.
DECODE_INLINE_BYTES = 64 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return _json(
        {"error": {"code": code, "message": message, "details": {}}},
        status=status,
        headers=headers or None,
    )


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer, encoded by msgspec: several times faster than the json module on
    the per-inference path (an answer: under 1 µs against 4 µs)."""
    return web.Response(
        body=msgspec.json.encode(data), status=status, headers=headers, content_type=JSON
    )


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer what aiohttp itself refuses (an unknown path, a wrong method) in the same
    JSON shape as every other error: its own answer is plain text."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            Allow=allowed,
        )
    except web.HTTPNotFound:
        routes = sorted(
            f"{route.method} {route.resource.canonical}"
            for route in request.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        )
        return _error(404, "not_found", f"no such path: {request.path}; paths: {', '.join(routes)}")


def _answer(request: web.Request, data: dict[str, Any], status: int = 200) -> web.Response:
    if request.content_type == MSGPACK or MSGPACK in request.headers.get("Accept", ""):
        return web.Response(body=msgspec.msgpack.encode(data), status=status, content_type=MSGPACK)
    return _json(data, status)


class LocalApi:
    """Routes for local producers, local inference and status readers."""

    def __init__(
        self,
        store: AgentStore,
        inference: InferenceService,
        status: Callable[[], Awaitable[dict[str, Any]]],
        max_body_bytes: int,
        *,
        masker: Masker | None = None,
    ) -> None:
        self._store = store
        self._masker = masker
        self._inference = inference
        self._status = status
        self._max_body = max_body_bytes
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[_json_errors])
        self.app.add_routes(
            [
                web.post("/v1/records/{stream}", self._append),
                web.post("/v1/infer/{model}", self._infer),
                web.post("/v1/explain/{model}", self._explain),
                web.get("/v1/models", self._models),
                web.get("/v1/status", self._get_status),
            ]
        )

    async def start(self, socket_path: Path, port: int = 0) -> None:
        listener = await asyncio.to_thread(_listening_socket, socket_path)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()
        if port:
            await web.TCPSite(self._runner, "127.0.0.1", port).start()
        logger.info("local API on %s%s", socket_path, f" and 127.0.0.1:{port}" if port else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The request's body as a map, or a `_BadRequest` saying what is wrong with it."""
        raw, kind = await self._read(request)
        return await _decoded(raw, kind)

    async def _read(self, request: web.Request) -> tuple[bytes, str]:
        """The request's body and its media type (JSON or msgpack), or a `_BadRequest`."""
        kind = request.content_type
        if kind not in ("application/json", MSGPACK):
            raise _BadRequest(
                415, "unsupported_media_type", f"send application/json or {MSGPACK}, not {kind}"
            )
        try:
            return await request.read(), kind
        except web.HTTPRequestEntityTooLarge as exc:
            raise _BadRequest(
                413, "too_large", f"body over the limit of {self._max_body} bytes"
            ) from exc

    async def _infer_body(self, request: web.Request) -> tuple[Any, str, dict[str, Any] | None]:
        """An inference's input, dtype and context, or a `_BadRequest`.

        A msgpack body whose input is the tensor's bytes (a camera frame, as the docs
        advise) is decoded here on the event loop whatever its size: that is a copy of
        the bytes, microseconds, where a hop to a thread and back costs 70 to 120 µs
        (the bench's no-op round trip). Any other body takes the general path (`_body`)."""
        raw, kind = await self._read(request)
        if kind == MSGPACK:
            try:
                tensor = _TENSOR_BODY.decode(raw)
            except msgspec.DecodeError:  # not that shape: the general path says what is wrong
                pass
            else:
                return _infer_request(msgspec.structs.asdict(tensor))
        return _infer_request(await _decoded(raw, kind))

    async def _append(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        if stream not in STREAMS:
            return _error(
                404, "unknown_stream", f"no stream {stream!r}; streams: {', '.join(STREAMS)}"
            )
        try:
            data = await self._body(request)
        except _BadRequest as exc:
            return _error(exc.status, exc.code, exc.message)
        records = data.get("records")
        if not isinstance(records, list) or not records or len(records) > MAX_RECORDS:
            return _error(
                400, "bad_field", f"body.records must be a list of 1 to {MAX_RECORDS} maps"
            )
        if not all(isinstance(r, dict) for r in records):
            return _error(400, "bad_field", "body.records: every record must be a map")
        if stream == "results" and any(r.get("kind") == "task" for r in records):
            # The hub ends tasks on such records: only the agent's task runner writes them.
            return _error(400, "bad_field", "body.records: kind 'task' is reserved for tasks")
        # The first record goes to the debug log as a field: the log's own masking (the
        # policy's rules, see Agent.run) hides what must not be written.
        logger.debug("%d records for %s", len(records), stream, extra={"record": records[0]})
        if self._masker is not None and self._masker.active:
            records = [self._masker.mask(r) for r in records]  # before anything is stored
        try:
            appended = await self._store.append(stream, records)
        except StreamFullError as exc:
            logger.warning("refused %d %s: %s", len(records), stream, exc.reason)
            return _error(507, "stream_full", exc.reason)
        except StoreWriteError as exc:
            logger.error("could not store %d %s: %s", len(records), stream, exc.reason)
            if exc.disk_full:
                return _error(507, "disk_full", exc.reason)
            return _error(503, "store_unavailable", exc.reason, **{"Retry-After": "5"})
        return _json(
            {"stream": stream, "first_seq": appended.first_seq, "last_seq": appended.last_seq},
            status=201,
        )

    async def _infer(self, request: web.Request) -> web.Response:
        from edge.inference.runner import ModelBusy, ModelFault
        from edge.inference.tensors import InputError

        name = request.match_info["model"]
        try:
            self._inference.runner(name)  # unknown or broken: say so before reading a body
            value, dtype, context = await self._infer_body(request)
            if context and self._masker is not None and self._masker.active:
                context = self._masker.mask(context)
            outcome = await self._inference.infer(name, value, dtype, context)
        except _BadRequest as exc:
            self._inference.tally.error("bad_request")
            return _error(exc.status, exc.code, exc.message)
        except UnknownModel as exc:
            self._inference.tally.error("unknown_model")
            return _error(404, "unknown_model", str(exc))
        except NotAllowed as exc:
            self._inference.tally.error("not_allowed")
            return _error(403, "not_allowed", str(exc))
        except ModelUnavailable as exc:
            self._inference.tally.error("model_unavailable")
            return _error(503, "model_unavailable", str(exc))
        except InputError as exc:
            return _error(400, exc.code, f"{name}: {exc.message}")
        except ModelBusy as exc:
            return _error(429, "busy", str(exc), **{"Retry-After": "1"})
        except ModelFault as exc:
            logger.error("inference failed: %s", exc)
            return _error(500, "model_fault", str(exc))
        inference = outcome.inference
        answer: dict[str, Any] = {
            "model": name,
            "version": outcome.version,
            "label": inference.label,
            "confidence": inference.confidence,
            "scores": dict(zip(outcome.labels, inference.scores, strict=True)),
            "latency_ms": inference.latency_ms,
            "queued_ms": inference.queued_ms,
            "clipped": inference.clipped,
            "recorded": (
                {"stream": "results", "seq": outcome.recorded_seq}
                if outcome.recorded_seq is not None
                else None
            ),
        }
        if outcome.record_error:
            answer["record_error"] = outcome.record_error
        return _answer(request, answer)

    async def _explain(self, request: web.Request) -> web.Response:
        """An attribution of one input (edge/inference/explaining.py), on a worker thread."""
        from edge.inference.explaining import ExplainRequestError, explain_blocking
        from edge.inference.runner import ModelFault
        from edge.inference.tensors import InputError
        from outpost.explain import BudgetError

        name = request.match_info["model"]
        try:
            runner = self._inference.runner(name)
            data = await self._body(request)
            answer = await asyncio.to_thread(explain_blocking, runner, data)
        except _BadRequest as exc:
            return _error(exc.status, exc.code, exc.message)
        except UnknownModel as exc:
            return _error(404, "unknown_model", str(exc))
        except NotAllowed as exc:
            return _error(403, "not_allowed", str(exc))
        except ModelUnavailable as exc:
            return _error(503, "model_unavailable", str(exc))
        except ExplainRequestError as exc:
            return _error(400, "bad_field", str(exc))
        except BudgetError as exc:
            return _error(422, "over_budget", str(exc))
        except InputError as exc:
            return _error(400, exc.code, f"{name}: {exc.message}")
        except ModelFault as exc:
            logger.error("explanation failed: %s", exc)
            return _error(500, "model_fault", str(exc))
        return _answer(request, answer)

    async def _models(self, request: web.Request) -> web.Response:
        return _answer(
            request,
            {"runtime": self._inference.runtime_label, "models": self._inference.models()},
        )

    async def _get_status(self, request: web.Request) -> web.Response:
        return _answer(request, {**(await self._status()), "time": time.time()})


def _packed_size(value: Any) -> int:
    """Its msgpack size; a value msgpack cannot hold (a huge integer) counts as too big."""
    try:
        return len(msgspec.msgpack.encode(value))
    except (OverflowError, ValueError, TypeError):
        return MAX_CONTEXT_BYTES + 1


async def _decoded(raw: bytes, kind: str) -> dict[str, Any]:
    """A body as a map, decoded on a worker thread when large; or a `_BadRequest`."""
    try:
        if len(raw) > DECODE_INLINE_BYTES:
            data = await asyncio.to_thread(_decode, raw, kind)
        else:
            data = _decode(raw, kind)
    except (ValueError, TypeError) as exc:
        raise _BadRequest(400, "bad_body", f"body is not valid {kind}: {exc}") from exc
    except RecursionError as exc:
        raise _BadRequest(400, "bad_body", "body is nested too deeply") from exc
    if not isinstance(data, dict):
        raise _BadRequest(400, "bad_body", "body must be a map")
    return data


class _TensorBody(msgspec.Struct, forbid_unknown_fields=True):
    """An inference request whose input is the tensor's bytes (see `_infer_body`)."""

    input: bytes
    dtype: str = "float32"
    context: dict[str, Any] | None = None


_TENSOR_BODY = msgspec.msgpack.Decoder(_TensorBody)


def _decode(raw: bytes, kind: str) -> Any:
    if kind == MSGPACK:
        return msgspec.msgpack.decode(raw)
    # msgspec, not the json module: 15 times faster on a small input, 4 times on a 96x96
    # image's lists; like json, a ValueError when malformed and a RecursionError when
    # nested too deeply; unlike it, NaN and Infinity, which are not JSON, are refused.
    return msgspec.json.decode(raw)


def _infer_request(data: dict[str, Any]) -> tuple[Any, str, dict[str, Any] | None]:
    unknown = sorted(str(k) for k in data.keys() - INFER_KEYS)
    if unknown:
        raise _BadRequest(
            400, "bad_field", f"body.{unknown[0]}: unknown key (known: context, dtype, input)"
        )
    if "input" not in data:
        raise _BadRequest(400, "bad_field", "body.input is required: the model's input tensor")
    dtype = data.get("dtype", "float32")
    if not isinstance(dtype, str):
        raise _BadRequest(400, "bad_dtype", "body.dtype must be a string: float32 or int8")
    context = data.get("context")
    if context is not None and (
        not isinstance(context, dict) or _packed_size(context) > MAX_CONTEXT_BYTES
    ):
        raise _BadRequest(
            400, "bad_field", f"body.context must be a map of at most {MAX_CONTEXT_BYTES} bytes"
        )
    return data["input"], dtype, context


def _listening_socket(path: Path) -> socket.socket:
    """A Unix socket listening at `path`, which appears only once it listens and has its
    final mode: a client that finds the file can connect (no refusal in the moment
    between bind and listen), and no one else can for a moment either."""
    staging = path.with_name(path.name + ".new")
    staging.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(staging))
        os.chmod(staging, 0o660)  # the agent's user and group only
        listener.listen(128)
        os.replace(staging, path)  # a bound socket stays reachable under its new name
    except BaseException:
        listener.close()
        staging.unlink(missing_ok=True)
        raise
    listener.setblocking(False)
    return listener
