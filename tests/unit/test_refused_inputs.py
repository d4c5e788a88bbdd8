"""Inputs refused with a reason rather than a traceback: a signed agent release whose
`issued_at` is not a number, and a courier export asked for a `max_records` that only
looks like digits. Each beside the same call that is taken."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.courierapi import courier_routes
from edge.localhttp import Request
from outpost import agentrelease, signing
from outpost.agentrelease import AgentFile, AgentManifest, ReleaseFileError

MANIFEST = AgentManifest(
    version="1.2.3",
    python="3.11",
    platforms=["x86_64"],
    files=[AgentFile("outpost-1.2.3-py3-none-any.whl", "0" * 64, 10, "any")],
    min_hub_version="1.0.0",
    min_agent_version="1.0.0",
)


@pytest.mark.parametrize("issued_at", [None, "yesterday", True, [1]])
def test_an_agent_release_whose_issued_at_is_not_a_number_is_refused(issued_at: Any) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    taken = agentrelease.sign(key, MANIFEST, 1700000000.5)
    assert agentrelease.verify(key.public_key(), taken) == (MANIFEST, 1700000000.5)

    body = {"agent_release": msgspec.to_builtins(MANIFEST), "issued_at": issued_at}
    with pytest.raises(ReleaseFileError, match="issued_at must be a number"):
        agentrelease.verify(key.public_key(), signing.sign(key, body))


class _Desk:
    """Stands in for the courier desk: records what an export was asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def export(self, limit: int) -> tuple[bytes, dict[str, int], bool]:
        self.asked.append(limit)
        return b"sealed", {"results": 0}, False


async def _export(desk: _Desk, query: str) -> int:
    (route,) = [r for r in courier_routes(lambda: desk) if r.pattern.endswith("export")]  # type: ignore[arg-type,return-value]
    answer = await route.handler(Request("POST", "/v1/courier/export", query, {}, b"", {}))
    return answer.status


@pytest.mark.parametrize("value", ["\u00b2", "0", "-1", "x", "\u0661\u0662"])
async def test_a_courier_export_refuses_a_max_records_that_is_not_a_whole_number(
    value: str,
) -> None:
    desk = _Desk()
    assert await _export(desk, "max_records=5") == 200
    assert await _export(desk, f"max_records={value}") == 400
    assert desk.asked == [5]
