"""The hub's API answers a NUL character, a cursor it never made and a control character
in a profile name with a 400 (or 422) naming the problem, on both back-ends alike: on
PostgreSQL, whose text holds no NUL, they were 500s, and an enrollment's token was used
up by the request that failed. Refused mutations from an address held off for failing
are not each written to the audit log. Each probe beside the same probe taken."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.app import Hub
from tests.api_client import ApiClient
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.support import mint_token


def _cursor(after: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/devices", {"profile": "a\x00b"}),
        ("/api/v1/devices/a%00b", None),
        ("/api/v1/tasks", {"model": "\x00"}),
        ("/api/v1/tasks/a%00", None),
        ("/api/v1/tasks", {"cursor": _cursor(10**30)}),
        ("/api/v1/audit", {"cursor": _cursor(10**30)}),
        ("/api/v1/devices", {"cursor": _cursor("\ud800")}),
    ],
)
async def test_a_nul_or_a_cursor_out_of_range_in_a_read_is_refused_with_400(
    api: ApiClient, path: str, params: dict[str, str] | None
) -> None:
    token = await api.token("admin")
    taken = await api.call("GET", path.replace("%00", "").split("?")[0], token=token)
    refused = await api.call("GET", path, token=token, params=params)
    assert taken.status in (200, 404), taken.body
    assert refused.status == 400, refused.body
    assert refused.error["code"] in ("bad_request", "bad_field")


async def test_a_nul_in_a_body_is_refused_with_400_naming_it(api: ApiClient) -> None:
    token = await api.token("operator")
    body = {"model": "vibration-anomaly", "input": [0], "wait_for_model": True}
    taken = await api.call("POST", "/api/v1/tasks", token=token, body=body)
    refused = await api.call("POST", "/api/v1/tasks", token=token, body={**body, "model": "a\x00"})
    assert taken.status == 202, taken.body
    assert refused.status == 400, refused.body
    assert "NUL" in refused.error["message"]


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("profile", ["a\x00b", "a\nb", "bell\x07"])
async def test_an_enrollment_with_a_control_character_in_its_profile_keeps_its_token(
    hub: Hub, api: ApiClient, profile: str
) -> None:
    token = await mint_token(hub)
    refused = await api.call(
        "POST", "/api/v1/enroll", body={"token": token, "csr": _csr(), "profile": profile}
    )
    assert refused.status == 400, refused.body
    taken = await api.call(
        "POST", "/api/v1/enroll", body={"token": token, "csr": _csr(), "profile": "raspberry pi 4"}
    )
    assert taken.status == 201, taken.body


@pytest.fixture
def hub_settings() -> str:
    return "auth_failures_per_min = 3\n"


async def test_mutations_refused_while_an_address_is_held_off_are_not_audited_one_by_one(
    api: ApiClient,
) -> None:
    statuses = [
        (await api.call("POST", f"/api/v1/tasks/{'x' * 2000}/cancel", token="bad")).status
        for _ in range(10)
    ]
    assert statuses[:3] == [401] * 3
    assert set(statuses[3:]) == {429}

    entries = await api.hub.parts.store.audit_log(before=None, limit=100)
    refused = [e for e in entries if e.path.startswith("/api/v1/tasks/xxxx")]
    assert [e.status for e in refused] == [401] * 3  # the failed logins, not the 429s
    assert all(len(e.path) <= 512 for e in refused)


@pytest.mark.parametrize("path", ["/api/v1/models", "/api/v1/agent-releases"])
@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("multipart/form-data", b"x"),  # no boundary
        ("multipart/form-data; boundary=", b"x"),  # an empty one
        (  # a body cut short inside its first part
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n{"a"',
        ),
    ],
)
async def test_a_multipart_upload_that_cannot_be_read_is_a_400(
    api: ApiClient, path: str, content_type: str, raw: bytes
) -> None:
    """aiohttp's reader raised ValueError: a 500 (and nothing staged was left)."""
    token = await api.token("admin")
    reply = await api.call("POST", path, token=token, raw=raw, content_type=content_type)
    assert reply.status == 400, (reply.status, reply.body)
    assert reply.error["details"]["field"].startswith("body"), reply.body  # or its part
