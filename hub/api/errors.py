"""JSON errors: ``{"error": {"code", "message", "details"}}`` with the right status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from outpost import schema
from outpost.schema import Struct

logger = logging.getLogger(__name__)


class ErrorBody(Struct, frozen=True):
    """What was wrong."""

    code: Annotated[str, Meta(description="stable machine-readable code")]
    message: Annotated[str, Meta(description="what was wrong, for people")]
    details: Annotated[dict[str, Any], Meta(description="e.g. the field that was wrong")]


class Error(Struct, frozen=True):
    """The answer of every error."""

    error: ErrorBody


class ApiError(Exception):
    """An error answered as JSON; `details` may name the field that was wrong."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def response(self) -> web.Response:
        body = Error(ErrorBody(self.code, self.message, self.details))
        return web.json_response(schema.dump(body), status=self.status, headers=self.headers)


def bad_field(field: str, message: str) -> ApiError:
    """A 400 naming the field (``body.x``, ``query.limit``, ...) that was wrong."""
    return ApiError(400, "bad_field", message, field=field)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer every error, the router's own 404 and 405 included, in the JSON shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        return ApiError(exc.status, code, exc.reason or "error").response()
    except Exception:  # a fault of the hub's: its log says what; the caller, only that
        logger.exception("%s %s failed", request.method, request.path)
        return ApiError(500, "internal", "the hub failed to answer; its log says why").response()
