"""Every route of the API refuses what it must: the role matrix over the whole table."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import warnings
from typing import cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access import apitokens
from hub.access.roles import Role, grants
from hub.app import Hub
from hub.fleet.enrollment import load_token_key
from tests.api_client import ApiClient
from tests.support import add_device, mint_token

PUBLIC = {
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/enroll/ca"),
    ("POST", "/api/v1/enroll/renew"),  # proof: a certificate of this hub and a CSR by its key
    ("GET", "/dashboard"),  # the page and its files hold no data: the stream needs a token
    ("GET", "/dashboard/{name}"),
}
DEVICE = {
    ("GET", "/api/v1/device/models/{name}/{version}/model.tflite"),
    ("GET", "/api/v1/device/agent-releases/{version}/{name}"),
}
BOOTSTRAP = {("POST", "/api/v1/enroll")}


@pytest.fixture
def hub_settings() -> str:
    # The matrix fails authentication on purpose, many times: lift the flood guard.
    return "auth_failures_per_min = 100000\napi_rate_burst = 100000\n"


def _forge(token: str, **change: object) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(change)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_every_route_refuses_bad_tokens_and_small_roles(hub: Hub, api: ApiClient) -> None:
    await add_device(hub, "dev-matrix0001")
    admin = await api.token("admin")
    claims = jwt.decode(admin, options={"verify_signature": False})
    revoked = await api.token("admin", subject="revoked")
    await hub.parts.store.revoke_api_token(
        jwt.decode(revoked, options={"verify_signature": False})["jti"], now=time.time()
    )
    stranger_key = ed25519.Ed25519PrivateKey.generate()
    # Signed with the hub's own key, but never recorded: the database is the truth.
    unrecorded, _ = apitokens.mint(
        load_token_key(hub.paths), role="admin", subject="ghost", ttl=600
    )
    bad_tokens = {
        "expired": await api.token("admin", ttl=60, now=time.time() - 3600),
        "tampered": _forge(await api.token("viewer"), role="admin"),
        "revoked": revoked,
        "another key": jwt.encode(claims, stranger_key, algorithm="EdDSA"),
        "alg none": jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]
        "bootstrap token": await mint_token(hub),
        "not issued here": unrecorded,
        "garbage": "not.a.token",
    }
    by_role = {role: await api.token(role) for role in apitokens.ROLES}
    problems = []
    seen_public = set()
    seen_device = set()

    for route in hub.parts.web.routes:
        path = (
            route.path.replace("{id}", "dev-matrix0001")
            .replace("{jti}", "no-such-jti")
            .replace("{name}", "no-such-layer")
            .replace("{version}", "1.0.0")
        )
        key = (route.method, route.path)
        if route.access == "device":  # a client certificate, never a token
            seen_device.add(key)
            for token in (None, by_role["admin"]):
                reply = await api.call(route.method, path, token=token)
                if reply.status != 401:
                    problems.append(f"{key} without a device certificate: {reply.status}")
            continue
        if route.access in ("public", "bootstrap"):
            seen_public.add(key)
            reply = await api.call(route.method, path, body={})
            if reply.status == 401 and route.access == "public":
                problems.append(f"{key}: public route asked for a token")
            continue
        reply = await api.call(route.method, path)
        if reply.status != 401:
            problems.append(f"{key} without a token: {reply.status}")
        elif reply.headers.get("WWW-Authenticate", "").split()[0] != "Bearer":
            problems.append(f"{key}: 401 without a WWW-Authenticate challenge")
        for name, token in bad_tokens.items():
            reply = await api.call(route.method, path, token=token)
            if reply.status != 401:
                problems.append(f"{key} with a {name} token: {reply.status}")
            elif set(reply.error) != {"code", "message", "details"}:
                problems.append(f"{key}: error body not in the JSON shape: {reply.body}")
        for role, token in by_role.items():
            reply = await api.call(route.method, path, token=token, body={})
            allowed = grants(role, cast(Role, route.access))  # the rest need a token
            if not allowed and reply.status != 403:
                problems.append(f"{key} as {role}: {reply.status}, expected 403")
            if allowed and reply.status in (401, 403):
                problems.append(f"{key} as {role}: refused with {reply.status}")

    assert seen_public == PUBLIC | BOOTSTRAP
    assert seen_device == DEVICE
    assert not problems, "\n".join(problems)


async def test_role_and_subject_come_from_the_token(api: ApiClient) -> None:
    token = await api.token("operator", subject="line-3-ops")

    reply = await api.call("GET", "/api/v1/whoami", token=token)

    assert reply.status == 200
    assert reply.body["subject"] == "line-3-ops"
    assert reply.body["role"] == "operator"
    assert reply.body["kind"] == "session"


def _context_up_to(hub: Hub, highest: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our side offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = highest
    return context


async def test_web_endpoint_refuses_tls_below_1_2(hub: Hub) -> None:
    port = hub.config.web_port
    # The control: the same client, allowed TLS 1.2, gets in.
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_context_up_to(hub, ssl.TLSVersion.TLSv1_2)
    )
    writer.close()

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=_context_up_to(hub, ssl.TLSVersion.TLSv1_1)
        )
