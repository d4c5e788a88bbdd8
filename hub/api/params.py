"""Reading requests: JSON bodies into typed models, query parameters, opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from hub.api.errors import ApiError, bad_field
from outpost import schema

T = TypeVar("T")
MAX_BODY = web.AppKey("max_body", int)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


async def json_body(request: web.Request, cls: type[T], max_bytes: int | None = None) -> T:
    """Parse the body into `cls`: 413 when over the route's limit (`max_bytes`, else the
    API's), 400 naming the field that is wrong."""
    data = await json_value(request, max_bytes)
    try:
        return schema.load(cls, data, "body")
    except schema.SchemaError as exc:
        raise bad_field(exc.path, str(exc)) from exc


async def json_value(request: web.Request, max_bytes: int | None = None) -> Any:
    """The body as parsed JSON: 413 when over the limit, 400 when not JSON."""
    limit = max_bytes or request.app[MAX_BODY]
    too_large = ApiError(413, "too_large", f"request body over {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise too_large from exc
    if len(raw) > limit:
        raise too_large
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_field("body", f"request body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise bad_field("body", "request body is nested too deeply") from exc


def limit(request: web.Request) -> int:
    """The page size: `limit` between 1 and 500 (default 50)."""
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    # isascii: str.isdigit() also holds for digits int() refuses, such as "²".
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise bad_field("query.limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def boolean(request: web.Request, name: str) -> bool | None:
    text = request.query.get(name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise bad_field(f"query.{name}", f"{name} must be true or false, got {text!r}")
    return text == "true"


def encode_cursor(value: Any) -> str:
    """Wrap the last key of a page into an opaque cursor."""
    return base64.urlsafe_b64encode(json.dumps({"after": value}).encode()).decode().rstrip("=")


def decode_cursor(request: web.Request, kind: type[Any]) -> Any:
    """The key after which the requested page starts, or None for the first page."""
    text = request.query.get("cursor")
    if text is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad_field("query.cursor", "cursor is not one this API returned") from exc
    if not isinstance(value, kind) or isinstance(value, bool):
        raise bad_field("query.cursor", "cursor is not one this API returned")
    return value


def page(
    found: Sequence[T], size: int, out: Callable[[T], Any], key: Callable[[T], Any]
) -> dict[str, Any]:
    """A page: the first `size` rows as `out` shows them, and a cursor (the `key` of the
    last shown row) when there are more.

    Callers fetch `size + 1` rows; the extra one only says whether a next page exists.
    """
    shown = found[:size]
    more = len(found) > size
    return {
        "items": [out(row) for row in shown],
        "next_cursor": encode_cursor(key(shown[-1])) if more else None,
    }
