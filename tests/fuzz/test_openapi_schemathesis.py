"""Fuzz the hub's API from its published OpenAPI document, with schemathesis.

Cases are generated from `/api/v1/openapi.json` as the running hub serves it, both
conforming (positive) and violating it (negative), and sent with a token of each role:
no answer is a 5xx, every error is the JSON error shape with a message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import requests
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from hub.access import apitokens
from hub.app import Hub
from tests.api_client import ApiClient
from tests.fuzz.conftest import EXAMPLES, count
from tests.fuzz.test_hub_api import DEVICE, hub_settings  # noqa: F401 - the fixture
from tests.support import add_device

ANSWER_WITHIN_S = 15.0


async def test_hub_api_from_its_openapi_document(hub: Hub, api: ApiClient) -> None:
    await add_device(hub, DEVICE)
    reply = await api.call("GET", "/api/v1/openapi.json", token=await api.token("viewer"))
    assert reply.status == 200, reply.body
    document = reply.body
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), [r for r in results if not isinstance(r, Ok)]
    strategy = st.one_of([op.as_strategy(mode) for op in operations for mode in GenerationMode])
    tokens: dict[str, str] = {
        role: await api.token(role, subject=f"openapi-{role}") for role in apitokens.ROLES
    }
    session = requests.Session()
    problems: list[str] = []

    @settings(max_examples=EXAMPLES * 4)
    @given(strategy, st.sampled_from([*tokens, "none"]))
    def check(case: Any, who: str) -> None:
        count("hub API (schemathesis)")
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who in tokens else {}
        response = case.call(
            base_url=hub.config.hub_url,
            session=session,
            headers=headers,
            timeout=ANSWER_WITHIN_S,
            verify=str(hub.paths.ca_cert),  # schemathesis passes its own `verify` otherwise
        )
        where = f"{case.method} {case.formatted_path} as {who}: {response.status_code}"
        if response.status_code >= 500:
            problems.append(f"{where} {response.text[:200]}")
        elif response.status_code >= 400:
            try:
                error = response.json().get("error")
            except ValueError:
                error = None
            if not isinstance(error, dict) or not error.get("message"):
                problems.append(f"{where}: not the JSON error shape: {response.text[:200]}")

    try:
        await asyncio.to_thread(check)
    finally:
        session.close()
    assert not problems, "\n".join(problems[:30])
