"""The hub's HTTPS endpoint. For now: enrollment, its CA download, and a health check."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hub.config import HubConfig
from hub.enrollment import BadTokenError, Enrollment, EnrollmentRefusedError
from hub.paths import HubPaths
from outpost import schema, tls

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """An error answered as JSON ``{"error": {"code", "message", "details"}}``."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class EnrollRequest:
    token: str = schema.setting(help="one-time bootstrap token", max_len=4096)
    csr: str = schema.setting(help="PEM certificate signing request", max_len=16384)
    profile: str = schema.setting(help="name of the device's profile", max_len=64)


def error_response(exc: ApiError) -> web.Response:
    body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    return web.json_response(body, status=exc.status)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            ApiError(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        )


async def read_json(request: web.Request, cls: type[Any]) -> Any:
    """Parse the body as JSON into `cls`, answering 400 with the field that was wrong."""
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"request body is not JSON: {exc}") from exc
    try:
        return schema.load(cls, data, "body")
    except schema.SchemaError as exc:
        raise ApiError(400, "bad_field", str(exc), field=exc.path) from exc


class WebServer:
    """Serves the hub's routes over HTTPS."""

    def __init__(self, paths: HubPaths, config: HubConfig, enrollment: Enrollment) -> None:
        self._paths = paths
        self._config = config
        self._enrollment = enrollment
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_BODY_BYTES)
        self.app.add_routes(
            [
                web.get("/api/v1/health", self._health),
                web.get("/api/v1/enroll/ca", self._ca),
                web.post("/api/v1/enroll", self._enroll),
            ]
        )

    async def start(self) -> None:
        context = await asyncio.to_thread(
            tls.server_context, self._paths.server_cert, self._paths.server_key
        )
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._config.web_host, self._config.web_port, ssl_context=context
        )
        await site.start()
        logger.info("web endpoint on %s", self._config.hub_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ca(self, request: web.Request) -> web.Response:
        return web.Response(body=self._enrollment.ca_pem, content_type="application/x-pem-file")

    async def _enroll(self, request: web.Request) -> web.Response:
        body: EnrollRequest = await read_json(request, EnrollRequest)
        try:
            enrolled = await self._enrollment.enroll(
                token=body.token, csr_pem=body.csr.encode(), profile=body.profile
            )
        except EnrollmentRefusedError as exc:
            logger.warning("enrollment refused: %s", exc)
            status = 401 if isinstance(exc, BadTokenError) else 422
            raise ApiError(status, "enrollment_refused", str(exc)) from exc
        return web.json_response(
            {
                "device_id": enrolled.device_id,
                "certificate": enrolled.certificate_pem.decode(),
                "ca": enrolled.ca_pem.decode(),
                "signing_public_key": enrolled.signing_public_pem.decode(),
                "broker_url": enrolled.broker_url,
                "not_after": enrolled.not_after,
            },
            status=201,
        )
