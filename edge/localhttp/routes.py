"""The local API's route table: a method and a path pattern to a handler.

A pattern is literal segments and `{name}` segments, each matching one whole non-empty
segment. A segment is percent-decoded after the path is split, so `%2F` stays inside
its segment and cannot reach another route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from edge.localhttp.messages import Request, Response

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """A handler for one method on one path pattern."""

    method: str
    pattern: str
    handler: Handler
    max_body: int | None = None  # None: the server's limit


def get(pattern: str, handler: Handler) -> Route:
    return Route("GET", pattern, handler)


def post(pattern: str, handler: Handler, *, max_body: int | None = None) -> Route:
    return Route("POST", pattern, handler, max_body)


# A pattern's segments: a literal, or None for a {name} segment, beside its name.
_Shape = tuple[tuple[str | None, str], ...]


class Routes:
    """Routes by pattern, each pattern's by method."""

    def __init__(self, routes: list[Route] | None = None) -> None:
        self._literal: dict[str, dict[str, Route]] = {}
        self._shaped: list[tuple[_Shape, dict[str, Route]]] = []
        self._patterns: dict[str, dict[str, Route]] = {}
        for route in routes or []:
            self.add(route)

    def add(self, route: Route) -> None:
        """Serve `route` (one handler per method and pattern)."""
        methods = self._patterns.get(route.pattern)
        if methods is None:
            methods = self._patterns[route.pattern] = {}
            segments = route.pattern.split("/")
            if any(s.startswith("{") for s in segments):
                shape = tuple(
                    (None, s[1:-1]) if s.startswith("{") and s.endswith("}") else (s, "")
                    for s in segments
                )
                self._shaped.append((shape, methods))
            else:
                self._literal[route.pattern] = methods
        if route.method in methods:
            raise ValueError(f"{route.method} {route.pattern} is served twice")
        methods[route.method] = route

    def match(self, raw_path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes of the pattern `raw_path` (not yet percent-decoded) matches, by
        method, and its {name} segments; None when no pattern does."""
        literal = self._literal.get(raw_path) if "%" not in raw_path else None
        if literal is not None:
            return literal, {}
        segments = [unquote(s) for s in raw_path.split("/")]
        path = "/".join(segments)
        literal = self._literal.get(path)
        if literal is not None and path.count("/") == raw_path.count("/"):
            return literal, {}
        for shape, methods in self._shaped:
            if len(shape) != len(segments):
                continue
            params = {}
            for (text, name), segment in zip(shape, segments, strict=True):
                if text is None:
                    if not segment:
                        break
                    params[name] = segment
                elif text != segment:
                    break
            else:
                return methods, params
        return None

    def listing(self) -> list[str]:
        """Every route as "METHOD /pattern", sorted: what a 404 answer offers."""
        return sorted(f"{m} {p}" for p, methods in self._patterns.items() for m in methods)
