"""The local API's clients as the benchmarks use them, and the floors under their
figures: bare servers on a Unix socket, each in a process of its own as the agent is,
that read the body and answer fixed bytes of an answer's size."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
from aiohttp import web

from outpost.modelbundle import Bundle
from tests.bench import leanhttp
from tests.bench.rounds import Call, Figures, alternate, callers


def real_input(bundle: Bundle) -> bytes:
    """The sample as a local program sends it: real values, float32 bytes."""
    assert bundle.sample is not None
    spec = bundle.manifest.input
    real = (np.array(bundle.sample.input, np.float32) - spec.zero_point) * spec.scale
    return real.astype("<f4").tobytes()


def poster(session: aiohttp.ClientSession, bundle: Bundle) -> Call:
    """One local program's call: the sample posted as msgpack, the answer read."""
    body = msgpack.packb({"input": real_input(bundle)})
    url = f"http://agent/v1/infer/{bundle.manifest.name}"
    headers = {"Content-Type": "application/msgpack"}

    async def call() -> None:
        async with session.post(url, data=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            await response.read()

    return call


async def lean_poster(socket: Path, bundle: Bundle) -> tuple[leanhttp.LeanConnection, Call]:
    """One lean client's connection to `socket` and its call: `bundle`'s sample posted
    as msgpack, a 200 answer expected. The caller closes the connection."""
    request = leanhttp.post(
        f"/v1/infer/{bundle.manifest.name}",
        msgpack.packb({"input": real_input(bundle)}),
        "application/msgpack",
    )
    connection = await leanhttp.connect(socket)

    async def call() -> None:
        status, body = await connection.call(request)
        assert status == 200, body

    return connection, call


def client_session(socket: Path, limit: int) -> aiohttp.ClientSession:
    """A client of the local API (in this process: it shares the cores with the agent)."""
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket), limit=limit))


# A bare aiohttp server answering the local API's path with fixed bytes, run as
# `python -c BARE_SERVER SOCKET ANSWER_HEX` in a process of its own.
BARE_SERVER = """
import sys
from aiohttp import web
answer = bytes.fromhex(sys.argv[2])
async def handler(request):
    await request.read()
    return web.Response(body=answer, content_type="application/msgpack")
app = web.Application()
app.router.add_post("/v1/infer/{model}", handler)
web.run_app(app, path=sys.argv[1], print=None, access_log=None)
"""
# The leanest server a Python agent could run: an asyncio protocol that parses with
# httptools (as the agent's own server, edge/localhttp/, does) and answers fixed bytes,
# with no routing, limits or handler; run as `python -c BARE_PROTOCOL SOCKET ANSWER_HEX`.
BARE_PROTOCOL = """
import asyncio, sys, httptools
answer = bytes.fromhex(sys.argv[2])
head = "HTTP/1.1 200 OK\\r\\nContent-Type: application/msgpack\\r\\nContent-Length: %d\\r\\n\\r\\n"
reply = (head % len(answer)).encode() + answer
class Bare(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser, self.body = transport, httptools.HttpRequestParser(self), []
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_body(self, body):
        self.body.append(body)
    def on_message_complete(self):
        b"".join(self.body)
        self.body = []
        self.transport.write(reply)
async def main():
    await asyncio.get_running_loop().create_unix_server(Bare, sys.argv[1])
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def bare_http(root: Path, small: Bundle) -> tuple[Figures, Figures, Figures, Figures]:
    """The floor under the local API: a server on a Unix socket reading the body and
    answering fixed bytes the size of an answer, asked by the same client the local API
    figures use, with the vibration model's body. aiohttp's server in this process
    (client and server on one event loop: no wake-up of another process per call) and
    in a process of its own, as the agent is; and the bare httptools protocol
    (BARE_PROTOCOL) in a process of its own, asked by that client and by the lean one
    (leanhttp.py): the floor under the lean client's figures."""
    answer = msgpack.packb(
        {"model": small.manifest.name, "version": "1.0.0", "label": "normal", "confidence": 0.99,
         "scores": {"normal": 0.99, "imbalance": 0.0, "looseness": 0.0,
                    "bearing_fault": 0.01},
         "latency_ms": 0.02, "queued_ms": 0.0, "clipped": 0, "recorded": None}
    )  # fmt: skip

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/msgpack")

    app = web.Application()
    app.router.add_post("/v1/infer/{model}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket = root / "bare-http.sock"
    await web.UnixSite(runner, str(socket)).start()
    try:
        async with client_session(socket, 1) as session:
            (inside,) = await alternate([lambda: callers(1, poster(session, small))])
    finally:
        await runner.cleanup()
    own, _ = await _apart(root / "bare-http-apart.sock", BARE_SERVER, answer, small)
    bare, lean = await _apart(
        root / "bare-protocol-apart.sock", BARE_PROTOCOL, answer, small, lean_too=True
    )
    assert lean is not None
    return inside, own, bare, lean


async def _apart(
    socket: Path, code: str, answer: bytes, small: Bundle, *, lean_too: bool = False
) -> tuple[Figures, Figures | None]:
    """`code`'s server (`python -c CODE SOCKET ANSWER_HEX`) in a process of its own, asked
    by one caller; `lean_too`: also by one lean client, in alternating rounds."""
    server = subprocess.Popen([sys.executable, "-c", code, str(socket), answer.hex()])
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the bare server for {socket.name} did not start")
            await asyncio.sleep(0.05)  # waiting for it to listen
        async with client_session(socket, 1) as session:
            rounds = [lambda: callers(1, poster(session, small))]
            if not lean_too:
                (figures,) = await alternate(rounds)
                return figures, None
            connection, call = await lean_poster(socket, small)
            try:
                figures, lean = await alternate([*rounds, lambda: callers(1, call)])
            finally:
                connection.close()
            return figures, lean
    finally:
        server.terminate()
        server.wait(10)
