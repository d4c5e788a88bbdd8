"""Floods are answered with 429: per token subject, and per address for failed logins,
refused enrollments and refused renewals included."""

from __future__ import annotations

import json
import logging
import ssl

import aiohttp
import pytest

from edge.enroll import load_device_key, make_csr
from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 0.1\napi_rate_burst = 5\nauth_failures_per_min = 3\n"


async def test_a_subject_over_its_rate_gets_429_with_retry_after(api: ApiClient) -> None:
    token = await api.token("viewer", subject="busy")
    other = await api.token("viewer", subject="calm")

    statuses = [(await api.call("GET", "/api/v1/whoami", token=token)).status for _ in range(7)]
    limited = await api.call("GET", "/api/v1/whoami", token=token)
    calm = await api.call("GET", "/api/v1/whoami", token=other)

    assert statuses[:5] == [200] * 5
    assert statuses[5:] == [429, 429]
    assert limited.error["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert calm.status == 200, "one subject's flood limited another"


async def test_repeated_failed_authentication_gets_429(api: ApiClient) -> None:
    statuses = [(await api.call("GET", "/api/v1/devices", token="bad")).status for _ in range(4)]
    limited = await api.call("GET", "/api/v1/devices", token="bad")

    assert statuses == [401, 401, 401, 429]
    assert limited.error["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


async def test_a_good_token_passes_while_its_address_cools_down(api: ApiClient) -> None:
    """Behind a NAT or the TLS-passthrough ingress everyone shares one address: a
    stranger's junk tokens locked every valid token out, admins' included."""
    admin = await api.token("admin", subject="alice")
    for _ in range(4):
        await api.call("GET", "/api/v1/devices", token="junk")
    assert (await api.call("GET", "/api/v1/devices", token="junk")).status == 429

    good = await api.call("GET", "/api/v1/whoami", token=admin)
    still_limited = await api.call("GET", "/api/v1/devices", token="junk")

    assert good.status == 200, good.body
    assert still_limited.status == 429, "a failing token from the address is still held off"


async def test_a_good_enrollment_and_device_pass_while_their_address_cools_down(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    """Enrollment, renewal and model downloads were refused to an address cooling down,
    before their credential was looked at: one site's stale token locked out the rest."""
    paths, _ = await enroll_device()
    junk = {"token": "not-a-token", "csr": "junk", "profile": "generic"}
    for _ in range(4):
        await api.call("POST", "/api/v1/enroll", body=junk)
    assert (await api.call("POST", "/api/v1/enroll", body=junk)).status == 429

    _, enrolled = await enroll_device()  # the same address, with a good bootstrap token
    renewal = {
        "certificate": paths.cert.read_text(),
        "csr": make_csr(load_device_key(paths)).decode(),
    }
    renewed = await api.call("POST", "/api/v1/enroll/renew", body=renewal)
    device = ssl.create_default_context(cafile=str(paths.ca_cert))
    device.load_cert_chain(paths.cert, paths.key)
    url = hub.config.hub_url + "/api/v1/device/models/none/1.0.0/model.tflite"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=device) as download:
        download_status = download.status

    assert enrolled.device_id
    assert renewed.status == 200, renewed.body
    assert download_status == 404, "the device passed the guard: the model is unknown"


async def test_refused_enrollments_cool_the_address_down(
    api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"token": "not-a-token", "csr": "junk", "profile": "generic"}
    statuses = [(await api.call("POST", "/api/v1/enroll", body=body)).status for _ in range(3)]
    # Refused ones still reach the handler, which says so in the log: a few times per
    # address, not once per request of a flood.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hub.api.enroll"):
        for _ in range(20):
            await api.call("POST", "/api/v1/enroll", body=body)
    said = [r for r in caplog.records if r.getMessage().startswith("enrollment refused")]
    assert len(said) == 20
    assert sum(r.levelno == logging.WARNING for r in said) <= 5
    limited = await api.call("POST", "/api/v1/enroll/renew", body={"certificate": "x", "csr": "y"})
    health = await api.call("GET", "/api/v1/health")

    assert statuses == [401, 401, 401]
    assert limited.status == 429, limited.body
    assert limited.error["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert health.status == 200, "a public route needs no login and is not cooled down"


async def test_a_subject_refused_for_its_role_is_rate_limited_too(api: ApiClient) -> None:
    """Its rate was taken after the role check: a viewer's token could send admin routes
    403s without end, each an audit row."""
    prober = await api.token("viewer", subject="prober")
    admin = await api.token("admin", subject="admin")

    statuses = [
        (await api.call("POST", "/api/v1/enroll-tokens", token=prober, body={})).status
        for _ in range(8)
    ]
    allowed = await api.call("POST", "/api/v1/enroll-tokens", token=admin, body={})

    assert statuses[:5] == [403] * 5
    assert statuses[5:] == [429] * 3
    assert allowed.status == 201, allowed.body  # the same request, by a role that may
    entries = await api.hub.parts.store.audit_log(before=None, limit=100)
    assert [e.status for e in entries if e.subject == "prober"] == [403] * 5


async def test_an_audit_entry_keeps_a_bounded_detail(api: ApiClient) -> None:
    """The path is clipped; a detail copied from the body was kept whole (a 300,000
    character model name, up to 4 MiB a request)."""
    token = await api.token("operator", subject="big")
    body = {"model": "m" * 300_000, "version": "1.0.0", "input": [0]}

    reply = await api.call("POST", "/api/v1/explain", token=token, body=body)

    assert reply.status == 404, reply.body
    (entry,) = [e for e in await api.hub.parts.store.audit_log(before=None, limit=10)
                if e.subject == "big"]  # fmt: skip
    assert len(entry.detail) < 1000
    assert json.loads(entry.detail)["model"].endswith("m…[300000 chars]")
