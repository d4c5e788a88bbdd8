"""The OpenAPI 3.1 document, generated from the route table with apispec: every route is
described because every route comes from the same table, and every body's schema comes
from its declaration (the `Struct` that also decodes or answers it)."""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from hub.api.errors import Error
from hub.api.routing import Route
from outpost import __version__, schema

ERROR_TEXT = {
    400: "a field or parameter is wrong (details.field names it)",
    401: "missing, expired, tampered, revoked or unknown token",
    403: "the token's role is too small for this route",
    404: "no such object",
    409: "conflicts with the current state",
    413: "request body too large",
    415: "the body is not of the media type the route takes",
    422: "well-formed but refused",
    429: "rate limited; see Retry-After",
    503: "the hub cannot do this now (the message says why)",
}


def build(routes: list[Route]) -> dict[str, Any]:
    """Return the OpenAPI document for `routes`."""
    spec = APISpec(
        title="Outpost hub API",
        version=__version__,
        openapi_version="3.1.0",
        info={"description": "Fleet registry, enrollment and administration of an Outpost hub."},
    )
    spec.components.security_scheme(
        "bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    spec.components.security_scheme(
        "device",
        {
            "type": "mutualTLS",
            "description": "the device's client certificate, issued by this hub at enrollment",
        },
    )
    declared = list(dict.fromkeys([Error, *(t for r in routes for t in _bodies(r))]))
    refs, components = schema.json_schemas(declared)
    for name, component in components.items():
        spec.components.schema(name, component)
    ref = dict(zip(declared, refs, strict=True))
    by_path: dict[str, dict[str, Any]] = {}
    for route in routes:
        by_path.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref)
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _bodies(route: Route) -> list[Any]:
    """The declarations a route takes and answers."""
    return [t for t in (route.body, route.response) if t is not None]


def _operation(route: Route, ref: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": f"{route.method.lower()}_{route.path}".replace("/", "_").strip("_"),
        "responses": {str(route.status): _success(route, ref)},
        "x-outpost-role": route.access,
    }
    errors = set(route.errors)
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref[route.body]}},
        }
        errors |= {400, 413}
    elif route.raw_body:
        op["requestBody"] = {
            "required": True,
            "content": {route.raw_body: {"schema": {"type": "string", "format": "binary"}}},
        }
        errors |= {413, 415}
    if route.paginated or any(p.where == "query" for p in route.params):
        errors.add(400)
    if route.access == "device":
        op["security"] = [{"device": []}]
        errors |= {401, 403, 429}
    elif route.access not in ("public", "bootstrap"):
        op["security"] = [{"bearer": []}]
        errors |= {401, 403, 429}
    else:
        op["security"] = []
        if route.access == "bootstrap":  # an address refused too often cools down
            errors.add(429)
    for status in sorted(errors):
        op["responses"][str(status)] = {
            "description": ERROR_TEXT[status],
            "content": {"application/json": {"schema": ref[Error]}},
        }
    parameters = [_param(p) for p in route.params]
    if route.paginated:
        parameters += [
            {
                "name": "limit",
                "in": "query",
                "description": "page size, 1 to 500 (50)",
                "schema": {"type": "integer", "minimum": 1, "maximum": 500},
            },
            {
                "name": "cursor",
                "in": "query",
                "description": "next_cursor of the previous page",
                "schema": {"type": "string"},
            },
        ]
    if parameters:
        op["parameters"] = parameters
    return op


def _success(route: Route, ref: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    if route.content_type != "application/json":
        return {
            "description": "OK",
            "content": {route.content_type: {"schema": {"type": "string"}}},
        }
    if route.response is None:
        return {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    body = ref[route.response]
    return {"description": "OK", "content": {"application/json": {"schema": body}}}


def _param(p: Any) -> dict[str, Any]:
    kind: dict[str, Any] = {"type": p.type}
    if p.repeated:
        kind = {"type": "array", "items": {"type": p.type}}
    out = {"name": p.name, "in": p.where, "description": p.description, "schema": kind}
    if p.where == "path":
        out["required"] = True
    return out
