"""The agent's local API, for programs on the device, whether the hub is reachable or not.

Served on a Unix socket in the data folder (and on 127.0.0.1:PORT only when configured).
`POST /v1/records/{stream}` answers only once the records are on disk: that answer is
the agent's promise that the hub will get them exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from edge.store import STREAMS, AgentStore, StreamFullError

logger = logging.getLogger(__name__)

MAX_BODY = 4 << 20
MAX_RECORDS = 1000


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": {}}}, status=status
    )


class LocalApi:
    """Routes for local producers and status readers."""

    def __init__(self, store: AgentStore, status: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._store = store
        self._status = status
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.post("/v1/records/{stream}", self._append),
                web.get("/v1/status", self._get_status),
            ]
        )

    async def start(self, socket_path: Path, port: int = 0) -> None:
        await asyncio.to_thread(socket_path.unlink, missing_ok=True)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(socket_path)).start()
        os.chmod(socket_path, 0o660)  # the agent's user and group only
        if port:
            await web.TCPSite(self._runner, "127.0.0.1", port).start()
        logger.info("local API on %s%s", socket_path, f" and 127.0.0.1:{port}" if port else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _append(self, request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        if stream not in STREAMS:
            return _error(
                404, "unknown_stream", f"no stream {stream!r}; streams: {', '.join(STREAMS)}"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"body over {MAX_BODY} bytes")
        try:
            if request.content_type == "application/msgpack":
                data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
            else:
                data = json.loads(raw)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            return _error(400, "bad_body", f"body is not valid {request.content_type}: {exc}")
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list) or not records or len(records) > MAX_RECORDS:
            return _error(
                400, "bad_field", f"body.records must be a list of 1 to {MAX_RECORDS} maps"
            )
        if not all(isinstance(r, dict) for r in records):
            return _error(400, "bad_field", "body.records: every record must be a map")
        try:
            appended = await self._store.append(stream, records)
        except StreamFullError as exc:
            logger.warning("refused %d %s: %s", len(records), stream, exc.reason)
            return _error(507, "stream_full", exc.reason)
        return web.json_response(
            {"stream": stream, "first_seq": appended.first_seq, "last_seq": appended.last_seq},
            status=201,
        )

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response({**(await self._status()), "time": time.time()})
