"""Fuzz a real agent's local API: arbitrary paths, methods, content types and bodies.

The agent runs as its own process with the shipped models; every request must get an
answer below 500 within a time bound, every JSON error names its reason, and the agent
still serves a good request at the end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import msgpack
from hypothesis import given
from hypothesis import strategies as st

from edge.store import STREAMS
from hub.app import Hub
from tests.conftest import Enroller
from tests.fuzz.conftest import count, on_loop
from tests.fuzz.test_parsers import JSON_VALUES, VALUES
from tests.integration.test_local_inference import SURFACE, VIBRATION, sample_of, start_agent
from tests.support import SHIPPED_MODELS, AgentProcess

ANSWER_WITHIN_S = 20.0  # a model's first load on a busy machine, not a hang

PATHS = st.one_of(
    st.sampled_from(["/v1/models", "/v1/status", "/v1/records/", "/v1/infer/", "/", "/v1"]),
    st.sampled_from([*STREAMS, "nope", "..", "%2e%2e", "a" * 300]).map(
        lambda s: f"/v1/records/{s}"
    ),
    st.sampled_from([VIBRATION, SURFACE, "none", "../x", "%00"]).map(lambda m: f"/v1/infer/{m}"),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
        lambda s: "/" + s.replace("?", "").replace("#", "")
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/msgpack",
        "application/json; charset=latin-1",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "",
        "application/json;;;=",
    ]
)
RECORD_BODIES = st.fixed_dictionaries(
    {
        "records": st.lists(st.dictionaries(st.text(max_size=8), VALUES, max_size=4), max_size=4)
        | VALUES
    }
)
INFER_BODIES = st.fixed_dictionaries(
    {"input": VALUES | st.binary(max_size=64)},
    optional={"dtype": VALUES, "context": VALUES, "other": VALUES},
)


@st.composite
def bodies(draw: st.DrawFn, content_type: str) -> bytes:
    value = draw(st.one_of(RECORD_BODIES, INFER_BODIES, VALUES))
    form = draw(st.integers(0, 2))
    if form == 0:
        return draw(st.binary(max_size=512))
    if form == 1 or "msgpack" not in content_type:
        try:
            return json.dumps(value).encode()
        except (TypeError, ValueError):
            return json.dumps(draw(JSON_VALUES)).encode()
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


async def test_local_api_answers_every_request_below_500(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, _, agent, client = await start_agent(enroll_device, agents)
    socket = paths.socket
    loop = asyncio.get_running_loop()
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)))
    problems: list[str] = []

    async def send(method: str, path: str, content_type: str, body: bytes) -> tuple[int, Any]:
        headers = {"Content-Type": content_type} if content_type else {}
        async with session.request(
            method, f"http://agent{path}", data=body, headers=headers
        ) as response:
            raw = await response.read()
            if response.content_type == "application/json":
                return response.status, json.loads(raw)
            return response.status, raw

    @given(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        PATHS,
        CONTENT_TYPES.flatmap(lambda kind: st.tuples(st.just(kind), bodies(kind))),
    )
    def check(method: str, path: str, typed_body: tuple[str, bytes]) -> None:
        count("agent local API")
        content_type, body = typed_body
        status, answer = on_loop(loop, send(method, path, content_type, body), ANSWER_WITHIN_S)
        if status >= 500:
            problems.append(f"{method} {path} [{content_type}] {body[:80]!r}: {status} {answer}")
        if status >= 400 and isinstance(answer, dict):
            error = answer.get("error")
            assert isinstance(error, dict), answer
            assert error.get("code"), answer
            assert error.get("message"), answer

    try:
        await asyncio.to_thread(check)
        assert not problems, "\n".join(problems[:20])
        status, answer = await client.infer(
            SURFACE, {"input": sample_of(SHIPPED_MODELS[1]).input, "dtype": "int8"}
        )
        assert status == 200, answer
        assert agent.process.poll() is None
    finally:
        await session.close()
        await client.close()
