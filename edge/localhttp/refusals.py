"""What the local API's server refuses by itself, before any handler: a head too large,
a body over its limit, a request over TCP that names another host, a connection past
the server's bound, a path or method it does not serve; each answered in the local API's
JSON error shape."""

from __future__ import annotations

from edge.localhttp.messages import Request, Response, error
from edge.localhttp.routes import Route, Routes

MAX_HEAD_BYTES = 32 * 1024  # the request line and headers
# Hosts a request over TCP may name (loopback only): a page a browser on the device
# loaded from elsewhere, its name re-pointed at 127.0.0.1 (DNS rebinding), names its own.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def loopback(host: str | None) -> bool:
    """Whether a Host header names this machine's loopback (or is absent: not a browser)."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal, maybe with a port after its bracket
        name = name.partition("]")[0] + "]"
    elif name.count(":") == 1:  # a name or IPv4 address with a port
        name = name.partition(":")[0]
    return name in LOOPBACK_HOSTS


def misdirected() -> Response:
    return error(421, "misdirected_request", "this API answers to localhost and 127.0.0.1 only")


def crowded() -> Response:
    return error(503, "busy", "too many connections to the local API; try again shortly")


def head_too_large() -> Response:
    return error(431, "headers_too_large", f"request head over {MAX_HEAD_BYTES} bytes")


def too_large(limit: int) -> Response:
    return error(413, "too_large", f"body over the limit of {limit} bytes")


def unrouted(request: Request, methods: dict[str, Route] | None, routes: Routes) -> Response:
    """404 naming the paths there are, or 405 naming the methods `request`'s path takes."""
    if methods is None:
        paths = ", ".join(routes.listing())
        return error(404, "not_found", f"no such path: {request.path}; paths: {paths}")
    allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
    return error(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on {request.path}; use {allowed}",
        Allow=allowed,
    )
