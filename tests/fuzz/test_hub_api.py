"""Fuzz the hub's HTTPS API from its own route table (the source of its OpenAPI document).

Every route gets random path and query parameters and bodies (shaped like its body type
or not), with a token of each role, a bad token or none: every answer is below 500 and
arrives in time; every error is the JSON shape `{"error": {code, message, details}}`
with a message.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.access import apitokens
from hub.api.routing import Route
from hub.app import Hub
from tests.api_client import ApiClient
from tests.fuzz.conftest import EXAMPLES, count, on_loop
from tests.fuzz.test_parsers import JSON_VALUES
from tests.support import add_device

DEVICE = "dev-fuzz0001"
ANSWER_WITHIN_S = 15.0
PATH_VALUES = st.one_of(
    st.sampled_from(
        [DEVICE, "dev-nosuch0001", "1.0.0", "vibration-anomaly", "0", "-1", "..", "²", "1" * 30]
    ),
    st.integers(min_value=0).map(str),
    st.text(max_size=30).map(lambda s: quote(s, safe="")).filter(bool),
)
QUERY_VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1e99", "true", "nan", "x" * 300, DEVICE, "²", "١٢"]),
    st.text(max_size=20),
    st.integers().map(str),
)
TOKENS = st.sampled_from([*apitokens.ROLES, "none", "garbage"])


@pytest.fixture
def hub_settings() -> str:
    # Thousands of requests from one address, many failing authentication on purpose.
    return "auth_failures_per_min = 100000\napi_rate_burst = 100000\n"


def body_for(route: Route) -> st.SearchStrategy[Any]:
    """Bodies shaped like the route's body type (every field random), or anything."""
    anything = st.one_of(JSON_VALUES, st.binary(max_size=256))
    if route.body is None:
        return anything
    names = [f.name for f in msgspec.structs.fields(route.body)]
    shaped = st.dictionaries(st.sampled_from([*names, "unknown"]), JSON_VALUES, max_size=len(names))
    return st.one_of(shaped, shaped, anything)


@st.composite
def requests(draw: st.DrawFn, routes: list[Route]) -> tuple[Route, str, dict[str, str], Any, str]:
    route = draw(st.sampled_from(routes))
    path = re.sub(r"\{[a-z_]+\}", lambda _: draw(PATH_VALUES), route.path)
    names = [p.name for p in route.params if p.where == "query"]
    query = draw(st.dictionaries(st.sampled_from([*names, "other"]), QUERY_VALUES, max_size=3))
    return route, path, query, draw(body_for(route)), draw(TOKENS)


async def test_hub_api_answers_every_request_below_500_with_json_errors(
    hub: Hub, api: ApiClient
) -> None:
    await add_device(hub, DEVICE)
    tokens: dict[str, str] = {
        role: await api.token(role, subject=f"fuzz-{role}") for role in apitokens.ROLES
    }
    tokens["garbage"] = "a.b.c"
    loop = asyncio.get_running_loop()
    problems: list[str] = []

    async def send(method: str, path: str, query: dict[str, str], body: Any, who: str) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await api.call(method, path, token=tokens.get(who), raw=raw, params=query)

    # Every route a share of the examples: at least the usual count per route in all.
    @settings(max_examples=EXAMPLES * 4)
    @given(requests(hub.parts.web.routes))
    def check(request: tuple[Route, str, dict[str, str], Any, str]) -> None:
        count("hub API (route table)")
        route, path, query, body, who = request
        reply = on_loop(loop, send(route.method, path, query, body, who), ANSWER_WITHIN_S)
        where = f"{route.method} {path} {query} as {who}: {reply.status}"
        if reply.status >= 500:
            problems.append(f"{where} {str(reply.body)[:200]}")
        elif reply.status >= 400:
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            if not isinstance(error, dict) or set(error) != {"code", "message", "details"}:
                problems.append(f"{where}: not the JSON error shape: {str(reply.body)[:200]}")
            elif not error["message"]:
                problems.append(f"{where}: error without a message")

    await asyncio.to_thread(check)
    assert not problems, "\n".join(problems[:30])
    assert (await api.call("GET", "/api/v1/health")).status == 200
