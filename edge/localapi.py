"""The agent's local API, for programs on the device, whether the hub is reachable or not.

Served on a Unix socket in the data folder (and on 127.0.0.1:PORT only when configured)
by the agent's own HTTP/1.1 server (edge/localhttp/), which reads each body whole within
`max_body_bytes` before a handler runs. Bodies are JSON or msgpack (`Content-Type:
application/msgpack`); answers come in the request's format (or as `Accept` asks).

- `POST /v1/records/{stream}` answers only once the records are on disk: that answer is
  the agent's promise that the hub will get them exactly once.
- `POST /v1/infer/{model}` runs a model on a worker thread and answers with its label,
  confidence, scores and latency; the reporting rules decide whether it is recorded. A
  body larger than the model's input could need is refused unread (edge/localbody.py).
- `POST /v1/explain/{model}` says what in one input the model's answer rests on
  (edge/inference/explaining.py), within a budget of model calls; one at a time on a
  thread of their own, a few waiting, more refused (429).
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
from typing import TYPE_CHECKING, Any

import msgspec

from edge.inference.service import InferenceService, ModelUnavailable, NotAllowed, UnknownModel
from edge.localbody import (
    DECODE_INLINE_BYTES,
    BadRequest,
    body_of,
    check_input_body,
    decoded,
    infer_request,
    tensor_request,
)
from edge.localhttp import (
    MSGPACK,
    HttpServer,
    Request,
    Response,
    Route,
    Routes,
    error,
    get,
    json_response,
    post,
)
from edge.masking import Masker
from edge.store import STREAMS, AgentStore, StoreWriteError, StreamFullError
from outpost import rollup, wire

if TYPE_CHECKING:
    from edge.inference.runner import ModelRunner

logger = logging.getLogger(__name__)

MAX_RECORDS = 1000
# Record kinds only the agent writes, by stream, with what they are for: the hub acts on
# them as the agent's word (it ends tasks on "task" results, and folds "rollup" metrics
# into the fleet's metrics, model statistics and drift), so a program may not send them.
RESERVED_KINDS = {"results": ("task", "tasks"), "metrics": (rollup.KIND, "the agent's roll-ups")}


def _answer(request: Request, data: dict[str, Any], status: int = 200) -> Response:
    """`data` in the request's format: msgpack if it came as msgpack or asks for it."""
    if request.content_type == MSGPACK or MSGPACK in request.headers.get("accept", ""):
        return Response(msgspec.msgpack.encode(data), status, MSGPACK)
    return json_response(data, status)


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
        self.routes = Routes(
            [
                post("/v1/records/{stream}", self._append),
                post("/v1/infer/{model}", self._infer),
                post("/v1/explain/{model}", self._explain),
                get("/v1/models", self._models),
                get("/v1/status", self._get_status),
            ]
        )
        self._server: HttpServer | None = None
        self._max_body = max_body_bytes

    def add(self, routes: list[Route]) -> None:
        """Serve `routes` beside the local API's own (before `start`)."""
        for route in routes:
            self.routes.add(route)

    async def start(self, socket_path: Path, port: int = 0) -> None:
        listener = await asyncio.to_thread(_listening_socket, socket_path)
        self._server = HttpServer(self.routes, max_body=self._max_body)
        await self._server.serve_socket(listener)
        if port:
            await self._server.serve_tcp("127.0.0.1", port)
        logger.info("local API on %s%s", socket_path, f" and 127.0.0.1:{port}" if port else "")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _body(self, request: Request) -> dict[str, Any]:
        """The request's body as a map, or a `BadRequest` saying what is wrong with it."""
        return await decoded(body_of(request), request.content_type)

    async def _infer_body(
        self, request: Request, name: str, runner: ModelRunner
    ) -> tuple[Any, str, dict[str, Any] | None]:
        """An inference's input, dtype and context, or a `BadRequest` (`ModelBusy` when the
        model's queue is full before a large body is decoded).

        A msgpack body whose input is the tensor's bytes is decoded here on the event loop
        (`tensor_request`), as is any small body; a large one on a worker thread, holding
        a place in the model's queue meanwhile."""
        raw, kind = body_of(request), request.content_type
        check_input_body(request, name, runner.manifest.input.shape)
        if kind == MSGPACK:
            tensor = tensor_request(raw)
            if tensor is not None:
                return tensor
        if len(raw) <= DECODE_INLINE_BYTES:
            return infer_request(await decoded(raw, kind))
        with self._inference.decoding(name):
            data = await decoded(raw, kind)
        return infer_request(data)

    async def _append(self, request: Request) -> Response:
        stream = request.params["stream"]
        if stream not in STREAMS:
            return error(
                404, "unknown_stream", f"no stream {stream!r}; streams: {', '.join(STREAMS)}"
            )
        try:
            data = await self._body(request)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        records = data.get("records")
        if not isinstance(records, list) or not records or len(records) > MAX_RECORDS:
            return error(
                400, "bad_field", f"body.records must be a list of 1 to {MAX_RECORDS} maps"
            )
        if not all(isinstance(r, dict) for r in records):
            return error(400, "bad_field", "body.records: every record must be a map")
        reserved = RESERVED_KINDS.get(stream)
        if reserved is not None:
            kind, what = reserved
            for index, record in enumerate(records):
                if record.get("kind") == kind:
                    return error(
                        400,
                        "bad_field",
                        f"body.records[{index}].kind: {kind!r} is reserved for {what} "
                        f"on the {stream} stream",
                    )
        # The first record goes to the debug log as a field: the log's own masking (the
        # policy's rules, see Agent.run) hides what must not be written.
        logger.debug("%d records for %s", len(records), stream, extra={"record": records[0]})
        if self._masker is not None and self._masker.active:
            records = [self._masker.mask(r) for r in records]  # before anything is stored
        packed = _packed(records)
        if isinstance(packed, Response):
            return packed
        try:
            appended = await self._store.append(stream, packed)
        except StreamFullError as exc:
            logger.warning("refused %d %s: %s", len(records), stream, exc.reason)
            return error(507, "stream_full", exc.reason)
        except StoreWriteError as exc:
            logger.error("could not store %d %s: %s", len(records), stream, exc.reason)
            if exc.disk_full:
                return error(507, "disk_full", exc.reason)
            return error(503, "store_unavailable", exc.reason, **{"Retry-After": "5"})
        return json_response(
            {"stream": stream, "first_seq": appended.first_seq, "last_seq": appended.last_seq},
            status=201,
        )

    async def _infer(self, request: Request) -> Response:
        from edge.inference.runner import ModelBusy, ModelFault
        from edge.inference.tensors import InputError

        name = request.params["model"]
        try:
            # Unknown or broken: say so before the body's faults.
            runner = self._inference.runner(name)
            value, dtype, context = await self._infer_body(request, name, runner)
            if context and self._masker is not None and self._masker.active:
                context = self._masker.mask(context)
            outcome = await self._inference.infer(name, value, dtype, context)
        except BadRequest as exc:
            self._inference.tally.error("bad_request")
            return error(exc.status, exc.code, exc.message)
        except UnknownModel as exc:
            self._inference.tally.error("unknown_model")
            return error(404, "unknown_model", str(exc))
        except NotAllowed as exc:
            self._inference.tally.error("not_allowed")
            return error(403, "not_allowed", str(exc))
        except ModelUnavailable as exc:
            self._inference.tally.error("model_unavailable")
            return error(503, "model_unavailable", str(exc))
        except InputError as exc:
            return error(400, exc.code, f"{name}: {exc.message}")
        except ModelBusy as exc:
            return error(429, "busy", str(exc), **{"Retry-After": "1"})
        except ModelFault as exc:
            logger.error("inference failed: %s", exc)
            return error(500, "model_fault", str(exc))
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

    async def _explain(self, request: Request) -> Response:
        """An attribution of one input (edge/inference/explaining.py), on the explanations'
        own thread, one at a time: a body is decoded only once its turn has come."""
        from edge.inference.explaining import ExplainBusy, ExplainRequestError
        from edge.inference.runner import ModelFault
        from edge.inference.tensors import InputError
        from outpost.explain import BudgetError

        name = request.params["model"]
        explanations = self._inference.explanations
        try:
            runner = self._inference.runner(name)
            body_of(request)  # a wrong format or size is said at once, not after a wait
            check_input_body(request, name, runner.manifest.input.shape)
            async with explanations.turn():
                data = await self._body(request)
                runner = self._inference.runner(name)  # the live one, after the wait
                answer = await explanations.run(runner, data)
        except BadRequest as exc:
            return error(exc.status, exc.code, exc.message)
        except UnknownModel as exc:
            return error(404, "unknown_model", str(exc))
        except NotAllowed as exc:
            return error(403, "not_allowed", str(exc))
        except ModelUnavailable as exc:
            return error(503, "model_unavailable", str(exc))
        except ExplainBusy as exc:
            return error(429, "busy", str(exc), **{"Retry-After": "5"})
        except ExplainRequestError as exc:
            return error(400, "bad_field", str(exc))
        except BudgetError as exc:
            return error(422, "over_budget", str(exc))
        except InputError as exc:
            return error(400, exc.code, f"{name}: {exc.message}")
        except ModelFault as exc:
            logger.error("explanation failed: %s", exc)
            return error(500, "model_fault", str(exc))
        return _answer(request, answer)

    async def _models(self, request: Request) -> Response:
        return _answer(
            request,
            {"runtime": self._inference.runtime_label, "models": self._inference.models()},
        )

    async def _get_status(self, request: Request) -> Response:
        return _answer(request, {**(await self._status()), "time": time.time()})


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


def _packed(records: list[dict[str, Any]]) -> list[msgspec.Raw] | Response:
    """Each record packed as it is stored and sent, or the refusal of the first that
    could never be sent: stored, it would hold its whole stream up (the hub refuses the
    batch, and the device would send it again for ever)."""
    packed = []
    for index, record in enumerate(records):
        try:
            body = msgspec.msgpack.encode(record)
        except (OverflowError, TypeError) as exc:  # an integer beyond 64 bits, say
            return error(400, "bad_field", f"body.records[{index}]: {exc}")
        problem = wire.record_problem(body)
        if problem is not None:
            too_large = len(body) > wire.MAX_RECORD_BYTES
            return error(
                413 if too_large else 400,
                "too_large" if too_large else "bad_field",
                f"body.records[{index}]: {problem}",
            )
        packed.append(msgspec.Raw(body))  # packed once: the store writes these bytes
    return packed
