"""A hub that cannot be reached, or answers as no hub would, is said in words by both the
agent's enrollment and the hub's remote commands: "Connection refused", a name that does
not resolve, OpenSSL's reason for a failed handshake; never aiohttp's text with the SSL
context's repr, nor os.strerror of a resolver's negative errno ("Unknown error -2").
Real sockets on loopback: a closed port, a plain-HTTP server, a server that is no hub."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web

from edge import enroll
from edge.enroll import EnrollError
from edge.identity import DevicePaths
from hub.cli import remote
from tests.support import PROFILES, free_port
from tests.tlsfiles import make_tls_files

# Reserved never to resolve (RFC 6761); without DNS the resolver fails it all the same.
NO_HOST = "nohost.invalid"


@contextlib.asynccontextmanager
async def serving(routes: web.RouteTableDef, context: ssl.SSLContext | None) -> AsyncIterator[str]:
    """Serve `routes` on loopback, over TLS with `context`, else plain HTTP (which a TLS
    client then fails to shake hands with); yield its HOST:PORT."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_enroll_to_a_hub_not_running_says_connection_refused() -> None:
    url = f"https://127.0.0.1:{free_port()}"

    with pytest.raises(EnrollError) as raised:
        await enroll._fetch_ca(url)

    assert str(raised.value) == f"cannot reach the hub at {url}: Connection refused"


async def test_enroll_to_a_name_that_does_not_resolve_says_so() -> None:
    with pytest.raises(EnrollError) as raised:
        await enroll._fetch_ca(f"https://{NO_HOST}:1")

    said = str(raised.value)
    assert said.startswith(f"cannot reach the hub at https://{NO_HOST}:1: cannot resolve ")
    assert repr(NO_HOST) in said
    assert "Unknown error" not in said
    assert "SSLContext" not in said


async def test_enroll_to_a_server_that_sends_no_ca_says_so(tmp_path: Path) -> None:
    routes = web.RouteTableDef()

    @routes.get("/api/v1/enroll/ca")
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>a router's login page</html>")

    files = make_tls_files(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    async with serving(routes, context) as address:
        url = f"https://{address}"
        claims = {"url": url, "caf": "sha256:" + "0" * 64, "exp": time.time() + 600}
        token = jwt.encode(claims, "k" * 32, "HS256")  # the agent reads it unverified
        with pytest.raises(EnrollError) as raised:
            await enroll.enroll(token, DevicePaths(tmp_path / "agent"), PROFILES / "generic.toml")

    assert str(raised.value).startswith(f"the hub at {url} answered with no CA certificate")


async def test_a_ca_from_the_hub_that_is_none_names_it() -> None:
    with pytest.raises(EnrollError) as raised:
        await enroll._post_csr("https://127.0.0.1:1", b"garbage", "t", b"csr", "generic", "")

    assert str(raised.value).startswith(
        "cannot load the CA certificate the hub sent (damaged, or not a PEM certificate)"
    )


async def _call(url: str) -> str:
    hub = remote.Endpoint(url, ssl.create_default_context(), "aaa.bbb.ccc")
    async with aiohttp.ClientSession(timeout=remote.TIMEOUT) as session:
        with pytest.raises(remote.RemoteError) as raised:
            await remote.Client(session, hub).get("/api/v1/devices")
    return str(raised.value)


async def test_a_remote_command_to_a_name_that_does_not_resolve_says_so() -> None:
    said = await _call(f"https://{NO_HOST}:1")

    assert said.startswith(f"cannot reach the hub at https://{NO_HOST}:1: cannot resolve the name")
    assert "Unknown error" not in said


async def test_a_failed_handshake_gives_openssl_s_reason_not_an_os_error() -> None:
    """OpenSSL's errno 1 is not EPERM: "Operation not permitted" would mislead."""
    routes = web.RouteTableDef()

    @routes.get("/api/v1/devices")
    async def devices(request: web.Request) -> web.Response:
        return web.json_response({"items": []})

    async with serving(routes, None) as address:
        said = await _call(f"https://{address}")

        assert said.startswith(f"cannot reach the hub at https://{address}: [SSL")
        assert "Operation not permitted" not in said
        with pytest.raises(EnrollError) as raised:
            await enroll._fetch_ca(f"https://{address}")
        assert "[SSL" in str(raised.value)
        assert "Operation not permitted" not in str(raised.value)
        assert "SSLContext" not in str(raised.value)
