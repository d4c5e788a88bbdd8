"""Admin routes: bootstrap tokens, API keys and revocation, the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.enroll import enroll
from edge.identity import DevicePaths
from hub.app import Hub
from tests.api_client import ApiClient
from tests.support import PROFILES


async def test_enroll_token_from_the_api_enrolls_a_device(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    admin = await api.token("admin")

    reply = await api.call(
        "POST",
        "/api/v1/enroll-tokens",
        token=admin,
        body={"ttl_s": 600, "labels": {"site": "north"}},
    )
    identity = await enroll(
        reply.body["token"], DevicePaths(tmp_path / "d"), PROFILES / "generic.toml"
    )

    assert reply.status == 201
    assert reply.body["hub_url"] == hub.config.hub_url
    device = await hub.parts.store.device(identity.device_id)
    assert device is not None
    assert device.labels == {"site": "north"}
    audit = await api.call("GET", "/api/v1/audit", token=admin)
    actions = [e["action"] for e in audit.body["items"]]
    assert actions[:2] == ["device.enroll", "enroll-token.create"]
    assert reply.body["token"] not in str(audit.body), "a token was written to the audit log"


async def test_api_key_lifecycle(api: ApiClient) -> None:
    admin = await api.token("admin", subject="alice")

    created = await api.call(
        "POST", "/api/v1/tokens", token=admin, body={"subject": "ci-deployer", "role": "operator"}
    )
    key = created.body["token"]
    jti = created.body["grant"]["jti"]
    works = await api.call("GET", "/api/v1/whoami", token=key)
    listed = await api.call("GET", "/api/v1/tokens", token=admin)
    revoke = await api.call("POST", f"/api/v1/tokens/{jti}/revoke", token=admin)
    after = await api.call("GET", "/api/v1/whoami", token=key)
    again = await api.call("POST", f"/api/v1/tokens/{jti}/revoke", token=admin)
    unknown = await api.call("POST", "/api/v1/tokens/nope/revoke", token=admin)

    assert created.status == 201
    grant = created.body["grant"]
    assert grant["kind"] == "api-key"
    assert 89 * 86400 < grant["expires_at"] - grant["issued_at"] <= 90 * 86400
    assert works.status == 200
    assert works.body["subject"] == "ci-deployer"
    assert jti in [t["jti"] for t in listed.body["items"]]
    assert all("token" not in t for t in listed.body["items"]), "a listing leaked a token"
    assert revoke.status == 200
    assert after.status == 401
    assert after.error["message"] == "token revoked"
    assert again.status == 409
    assert unknown.status == 404


async def test_api_key_requests_out_of_bounds_are_refused(api: ApiClient) -> None:
    admin = await api.token("admin")
    cases = [
        ({"subject": "x", "role": "root"}, 400),
        ({"subject": "has spaces", "role": "viewer"}, 422),
        ({"subject": "x", "role": "viewer", "ttl_s": 10 * 366 * 86400}, 422),
        ({"subject": "x", "role": "viewer", "expires": 1}, 400),
    ]
    for body, status in cases:
        reply = await api.call("POST", "/api/v1/tokens", token=admin, body=body)
        assert reply.status == status, (body, reply.body)


async def test_refused_mutations_are_audited_too(api: ApiClient) -> None:
    viewer = await api.token("viewer", subject="bob")
    admin = await api.token("admin")

    refused = await api.call(
        "POST", "/api/v1/tokens", token=viewer, body={"subject": "x", "role": "admin"}
    )
    anonymous = await api.call("PATCH", "/api/v1/devices/dev-x0000001", body={"labels": {}})
    audit = await api.call("GET", "/api/v1/audit", token=admin, params={"limit": "2"})

    assert refused.status == 403
    assert anonymous.status == 401
    newest, older = audit.body["items"]
    assert (newest["subject"].startswith("anonymous@"), newest["status"]) == (True, 401)
    assert (older["subject"], older["role"], older["status"]) == ("bob", "viewer", 403)
    assert audit.body["next_cursor"] is None


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/v1/tokens", {"subject": "ci", "role": "viewer"}, 201),  # an API key
        ("POST", "/api/v1/enroll-tokens", {}, 201),  # a bootstrap token
        ("GET", "/api/v1/devices/%3Cscript%3E", None, 404),  # an error echoing the path
    ],
)
async def test_api_answers_are_neither_cached_nor_sniffed(
    api: ApiClient, method: str, path: str, body: object, status: int
) -> None:
    """Only the dashboard's own files carried these: a new API key's answer could be kept
    by a cache, and an error echoing the path read as HTML."""
    reply = await api.call(method, path, token=await api.token("admin"), body=body)

    assert reply.status == status, reply.body
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Strict-Transport-Security"] == "max-age=31536000"
