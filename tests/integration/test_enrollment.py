"""Enrollment over HTTPS against a running hub: the happy path and every refusal."""

from __future__ import annotations

import base64
import json
import ssl
import stat
import time
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edge.enroll import EnrollError, _device_key, enroll
from edge.identity import DevicePaths, Identity
from hub.app import Hub
from hub.initialise import AlreadyInitialisedError, initialise
from tests.api_client import ApiClient
from tests.support import PROFILES, mint_token


def _mode(path: Any) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _post_enroll(hub: Hub, body: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{hub.config.hub_url}/api/v1/enroll",
            data=raw if raw is not None else json.dumps(body).encode(),
            ssl=context,
        ) as response,
    ):
        return response.status, await response.json()


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_enrollment_round_trip(hub: Hub, tmp_path: Any) -> None:
    token = await mint_token(hub, labels={"site": "north", "line": "2"})
    paths = DevicePaths(tmp_path / "device")

    identity = await enroll(token, paths, PROFILES / "raspberry-pi-4.toml")

    assert identity.device_id.startswith("dev-")
    assert _mode(paths.key) == 0o600
    assert _mode(paths.identity) == 0o600
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    # The fleet CA the token pins, and nothing beside it: every later connection trusts
    # all that identity/ca.crt holds.
    assert x509.load_pem_x509_certificates(paths.ca_cert.read_bytes()) == [
        x509.load_pem_x509_certificate(hub.paths.ca_cert.read_bytes())
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.device_id
    lifetime_days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 89 <= lifetime_days <= 91, "default device certificate lifetime is 90 days"
    assert paths.hub_signing_pub.read_bytes() == hub.paths.signing_pub.read_bytes()
    assert Identity.load(paths) == identity
    assert identity.broker_url == f"mqtts://127.0.0.1:{hub.config.mqtt_port}"

    device = await hub.parts.store.device(identity.device_id)
    assert device is not None
    assert device.labels == {"site": "north", "line": "2"}
    assert device.profile == "raspberry-pi-4"
    assert device.cert_not_after == pytest.approx(cert.not_valid_after_utc.timestamp(), abs=1)
    assert device.cert_serial == format(cert.serial_number, "x")


async def test_the_private_key_never_leaves_the_device(hub: Hub, tmp_path: Any) -> None:
    token = await mint_token(hub)
    paths = DevicePaths(tmp_path / "device")
    await enroll(token, paths, PROFILES / "generic.toml")
    key_pem = paths.key.read_bytes()
    assert b"PRIVATE KEY" in key_pem
    for path in hub.paths.root.rglob("*"):
        if path.is_file():
            assert key_pem not in path.read_bytes(), f"device key found in {path}"


async def test_reused_token_is_refused(hub: Hub, tmp_path: Any) -> None:
    token = await mint_token(hub)
    await enroll(token, DevicePaths(tmp_path / "first"), PROFILES / "generic.toml")

    with pytest.raises(EnrollError, match="already used"):
        await enroll(token, DevicePaths(tmp_path / "second"), PROFILES / "generic.toml")

    assert len(await hub.parts.store.devices()) == 1
    assert not DevicePaths(tmp_path / "second").identity.exists()


async def test_an_answer_lost_on_its_way_is_given_again_to_the_same_key_only(
    hub: Hub, tmp_path: Any
) -> None:
    """The device's first try got no answer (a timeout, a cut link, Ctrl-C before it
    saved it) after the hub took the token: the same token and the same key (the agent
    keeps its key) enroll the same device again; another key is refused."""
    token = await mint_token(hub, labels={"site": "north"})
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"token": token, "csr": _csr(key), "profile": "generic"}
    first_status, first = await _post_enroll(hub, body)  # the answer the device never got
    assert first_status == 201, first

    again_status, again = await _post_enroll(hub, body)
    thief_status, thief = await _post_enroll(
        hub, {**body, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    )

    assert again_status == 201, again
    assert again["device_id"] == first["device_id"]
    assert again["name"] == first["name"]
    cert = x509.load_pem_x509_certificate(again["certificate"].encode())
    assert cert.public_key() == key.public_key()
    assert (thief_status, "already used" in thief["error"]["message"]) == (401, True)
    devices = await hub.parts.store.devices()
    assert [d.device_id for d in devices] == [first["device_id"]]
    assert devices[0].labels == {"site": "north"}
    assert devices[0].cert_serial == format(cert.serial_number, "x")


async def test_asking_again_gets_the_same_certificate_not_one_more(hub: Hub) -> None:
    """Each ask issued one more certificate, with no spacing (renewals have one): a
    device looping on its token could grow the hub's certificates, and the CRL once it
    was revoked, without bound. The first answer is kept and given again."""
    token = await mint_token(hub)
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"token": token, "csr": _csr(key), "profile": "generic"}
    answers = [await _post_enroll(hub, body) for _ in range(5)]

    assert [status for status, _ in answers] == [201] * 5
    assert {answer["certificate"] for _, answer in answers} == {answers[0][1]["certificate"]}
    device_id = answers[0][1]["device_id"]
    assert len(await hub.parts.store.device_certs(device_id)) == 1
    # Revoked since: the same ask is refused, as a renewal would be.
    assert await hub.parts.store.revoke_device(device_id, by="t", now=time.time())
    status, refused = await _post_enroll(hub, body)
    assert (status, "revoked" in refused["error"]["message"]) == (401, True)


async def test_an_interrupted_agent_enrollment_is_finished_by_running_it_again(
    hub: Hub, tmp_path: Any
) -> None:
    token = await mint_token(hub)
    paths = DevicePaths(tmp_path / "device")
    paths.identity_dir.mkdir(parents=True)
    key = _device_key(paths)  # the key the agent made and kept
    status, first = await _post_enroll(
        hub, {"token": token, "csr": _csr(key), "profile": "generic"}
    )
    assert status == 201  # ... and then the agent was stopped before it saved anything

    identity = await enroll(token, paths, PROFILES / "generic.toml")

    assert identity.device_id == first["device_id"]
    assert len(await hub.parts.store.devices()) == 1


async def test_expired_token_is_refused_by_agent_and_hub(hub: Hub, tmp_path: Any) -> None:
    token = await mint_token(hub, ttl=60, now=time.time() - 3600)

    with pytest.raises(EnrollError, match="expired"):
        await enroll(token, DevicePaths(tmp_path / "device"), PROFILES / "generic.toml")

    # The hub refuses it too, for a client that does not check expiry itself.
    key = ec.generate_private_key(ec.SECP256R1())
    status, body = await _post_enroll(hub, {"token": token, "csr": _csr(key), "profile": "generic"})
    assert status == 401
    assert "expired" in body["error"]["message"]


def _tamper(token: str, change: dict[str, Any]) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(change)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_tampered_token_is_refused(hub: Hub, tmp_path: Any) -> None:
    token = await mint_token(hub, labels={"site": "north"})
    forged = _tamper(token, {"labels": {"site": "hq", "role": "admin"}})

    with pytest.raises(EnrollError, match="signature"):
        await enroll(forged, DevicePaths(tmp_path / "device"), PROFILES / "generic.toml")

    assert await hub.parts.store.devices() == []
    # The genuine token was not used up by the forgery.
    await enroll(token, DevicePaths(tmp_path / "genuine"), PROFILES / "generic.toml")


async def test_token_pinning_another_ca_is_refused_before_sending_anything(
    hub: Hub, tmp_path: Any
) -> None:
    token = await mint_token(hub)
    wrong_pin = _tamper(token, {"caf": "sha256:" + "0" * 64})

    with pytest.raises(EnrollError, match="fingerprint does not match"):
        await enroll(wrong_pin, DevicePaths(tmp_path / "device"), PROFILES / "generic.toml")

    assert await hub.parts.store.devices() == []


async def test_weak_csr_is_refused_and_keeps_the_token(hub: Hub) -> None:
    token = await mint_token(hub)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    status, body = await _post_enroll(hub, {"token": token, "csr": _csr(weak), "profile": "x"})

    assert status == 422
    assert "weak key" in body["error"]["message"]
    strong = ec.generate_private_key(ec.SECP256R1())
    status, body = await _post_enroll(
        hub, {"token": token, "csr": _csr(strong), "profile": "generic"}
    )
    assert status == 201, body


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", None),
        (b"[1, 2]", "body"),
        (json.dumps({"token": "t", "csr": "c"}).encode(), "body.profile"),
        (json.dumps({"token": "t", "csr": "c", "profile": 3}).encode(), "body.profile"),
        (json.dumps({"token": "t", "csr": "c", "profile": "p", "x": 1}).encode(), "body.x"),
    ],
)
async def test_malformed_enrollment_requests_name_the_field(
    hub: Hub, raw: bytes, field: str | None
) -> None:
    status, body = await _post_enroll(hub, None, raw=raw)

    assert status == 400
    assert set(body["error"]) == {"code", "message", "details"}
    if field is not None:
        assert body["error"]["details"]["field"] == field


async def test_oversized_enrollment_body_is_refused(hub: Hub) -> None:
    status, body = await _post_enroll(hub, None, raw=b"x" * (256 * 1024))
    assert status == 413
    assert body["error"]["code"] == "too_large"


async def test_bad_profile_is_refused_before_contacting_the_hub(hub: Hub, tmp_path: Any) -> None:
    token = await mint_token(hub)
    profile = tmp_path / "bad.toml"
    profile.write_text((PROFILES / "generic.toml").read_text().replace("cores = 1", "cores = 0"))

    with pytest.raises(ValueError, match=r"capabilities\.cores"):
        await enroll(token, DevicePaths(tmp_path / "device"), profile)

    # The token is still good.
    await enroll(token, DevicePaths(tmp_path / "device2"), PROFILES / "generic.toml")


def test_init_refuses_to_overwrite_and_keeps_keys_private(tmp_path: Any) -> None:
    from hub.paths import HubPaths

    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=["hub.example"])
    ca_before = paths.ca_key.read_bytes()

    with pytest.raises(AlreadyInitialisedError):
        initialise(paths, server_names=[])

    assert paths.ca_key.read_bytes() == ca_before
    for key in (
        paths.ca_key,
        paths.server_key,
        paths.client_key,
        paths.signing_key,
        paths.token_key,
    ):
        assert _mode(key) == 0o600, key
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.example" in names.get_values_for_type(x509.DNSName)


async def test_asking_again_after_a_renewal_gets_no_stale_certificate(hub: Hub) -> None:
    """The kept first answer is given again only while it is the device's certificate:
    renewed since, the device asking again would have got a superseded one."""
    token = await mint_token(hub)
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"token": token, "csr": _csr(key), "profile": "generic"}
    _, first = await _post_enroll(hub, body)
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    renewal = {"certificate": first["certificate"], "csr": _csr(key)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{hub.config.hub_url}/api/v1/enroll/renew",
            data=json.dumps(renewal).encode(),
            ssl=context,
        ) as renewed,
    ):
        assert renewed.status == 200, await renewed.text()

    status, again = await _post_enroll(hub, body)

    assert status == 201, again
    assert again["certificate"] != first["certificate"]
    device = await hub.parts.store.device(first["device_id"])
    assert device is not None
    served = x509.load_pem_x509_certificate(again["certificate"].encode())
    assert device.cert_serial == format(served.serial_number, "x")


async def test_a_bootstrap_token_revoked_before_its_time_enrolls_nothing(
    hub: Hub, api: ApiClient
) -> None:
    """A leaked token could not be revoked: it enrolled a device until it expired (up to
    30 days). Revoked through the API (or `outpost-hub token revoke`), it is refused;
    one not revoked still enrolls (the control)."""
    admin = await api.token("admin")
    leaked = await api.call("POST", "/api/v1/enroll-tokens", token=admin, body={"ttl_s": 3600})
    kept = await api.call("POST", "/api/v1/enroll-tokens", token=admin, body={"ttl_s": 3600})
    assert (leaked.status, kept.status) == (201, 201)
    path = f"/api/v1/enroll-tokens/{leaked.body['jti']}/revoke"

    revoked = await api.call("POST", path, token=admin)
    again = await api.call("POST", path, token=admin)
    unknown = await api.call("POST", "/api/v1/enroll-tokens/nope/revoke", token=admin)
    as_viewer = await api.call("POST", path, token=await api.token("viewer"))
    key = ec.generate_private_key(ec.SECP256R1())
    refused_status, refused = await _post_enroll(
        hub, {"token": leaked.body["token"], "csr": _csr(key), "profile": "generic"}
    )
    enrolled_status, _ = await _post_enroll(
        hub, {"token": kept.body["token"], "csr": _csr(key), "profile": "generic"}
    )

    assert (revoked.status, revoked.body) == (200, {"jti": leaked.body["jti"], "revoked": True})
    assert (again.status, unknown.status, as_viewer.status) == (409, 404, 403)
    assert refused_status == 401
    assert refused["error"]["message"] == "bootstrap token refused: token revoked"
    assert enrolled_status == 201
