"""What the agent's enrollment makes of a hub's odd answers (a real HTTPS server on
loopback): an HTML error page from a proxy, a JSON reply of the wrong shape, or no
answer within the timeout are each an `EnrollError` naming what happened, which the
CLI prints; none is a traceback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge import enroll
from edge.enroll import EnrollError
from tests.support import free_port
from tests.tlsfiles import make_tls_files

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serving(tmp_path: Path, handler: Handler) -> AsyncIterator[tuple[str, bytes]]:
    files = make_tls_files(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    app = web.Application()
    app.router.add_post("/api/v1/enroll", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}", files.ca.read_bytes()
    finally:
        await runner.cleanup()


async def proxy_page(request: web.Request) -> web.Response:
    return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")


async def odd_json(request: web.Request) -> web.Response:
    return web.json_response(["not", "an", "object"], status=400)


async def error_not_a_map(request: web.Request) -> web.Response:
    return web.json_response({"error": "just text"}, status=403)


@pytest.mark.parametrize(
    ("handler", "said", "keep_key"),
    [
        # Not the hub refusing: a proxy's page, perhaps after the hub took the token.
        (
            proxy_page,
            "the hub (or a proxy before it) failed the enrollment request (502): Bad Gateway; "
            "run the same enroll again",
            True,
        ),
        (odd_json, "the hub refused enrollment (400): Bad Request", False),
        (error_not_a_map, "the hub refused enrollment (403): Forbidden", False),
    ],
)
async def test_an_odd_answer_is_named(
    tmp_path: Path, handler: Handler, said: str, keep_key: bool
) -> None:
    async for url, ca in serving(tmp_path, handler):
        with pytest.raises(EnrollError) as raised:
            await enroll._post_csr(url, ca, "token", b"csr", "generic", "name")
        assert str(raised.value).startswith(said)
        assert raised.value.keep_key is keep_key


async def test_no_answer_within_the_timeout_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await answered.wait()
        return web.Response(status=201)

    monkeypatch.setattr(enroll, "HTTP_TIMEOUT", aiohttp.ClientTimeout(total=0.5))
    async for url, ca in serving(tmp_path, silent):
        with pytest.raises(EnrollError, match="failed: TimeoutError"):
            await enroll._post_csr(url, ca, "token", b"csr", "generic", "name")
        answered.set()
