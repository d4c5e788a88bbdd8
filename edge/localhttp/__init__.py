"""The HTTP/1.1 server under the agent's local API: messages, routes and the server."""

from edge.localhttp.messages import JSON, MSGPACK, OCTETS, Request, Response, error, json_response
from edge.localhttp.routes import Handler, Route, Routes, get, post
from edge.localhttp.server import HttpServer

__all__ = [
    "JSON",
    "MSGPACK",
    "OCTETS",
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "Route",
    "Routes",
    "error",
    "get",
    "json_response",
    "post",
]
