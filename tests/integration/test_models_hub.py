"""The hub's side of models: uploads checked with the real runtime, stored and signed;
downloads by devices with their certificate (resumable); roll-outs refused clearly."""

from __future__ import annotations

import hashlib
import ssl

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.app import Hub
from outpost import release, signing
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS

VIBRATION = SHIPPED_MODELS[0]


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_burst = 100000\n"


async def test_upload_is_checked_stored_and_signed(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin")
    model, manifest, sample = bundle_parts(VIBRATION, version="1.1.0")
    reply = await upload(hub, admin, model, manifest, sample)
    assert reply.status == 201, reply.body
    assert reply.body["model"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert reply.body["model"]["size"] == len(model)
    assert reply.body["checked_with"]  # the runtime that ran the sample

    listed = await api.call("GET", "/api/v1/models", token=await api.token("viewer"))
    assert [(m["name"], m["version"]) for m in listed.body["items"]] == [
        ("vibration-anomaly", "1.1.0")
    ]
    # The release verifies against the hub's signing key and pins the file.
    stored = await hub.parts.store.model("vibration-anomaly", "1.1.0")
    assert stored is not None
    public = serialization.load_pem_public_key(hub.paths.signing_pub.read_bytes())
    assert isinstance(public, ed25519.Ed25519PublicKey)
    checked = release.verify(public, signing.Signed(stored.document, stored.signature))
    assert (checked.manifest.sha256, checked.manifest.size) == (stored.sha256, len(model))

    again = await upload(hub, admin, model, manifest, sample)
    assert again.status == 409
    assert "immutable" in again.error["message"]


async def test_a_model_that_fails_its_sample_is_refused(hub: Hub, api: ApiClient) -> None:
    model, manifest, sample = bundle_parts(VIBRATION, version="2.0.0")
    sample["expected"] = {**sample["expected"], "label": "bearing_fault", "output": [0, 0, 0, 0]}
    reply = await upload(hub, await api.token("admin"), model, manifest, sample)
    assert reply.status == 422
    assert "the sample gave" in reply.error["message"]
    assert await hub.parts.store.models() == []
    assert not (hub.paths.models / "vibration-anomaly" / "2.0.0").exists()
    assert [p.name for p in hub.paths.models.iterdir()] == []  # no staging left behind


async def test_bad_uploads_name_what_was_wrong(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin")
    model, manifest, sample = bundle_parts(VIBRATION)

    wrong_sha = await upload(hub, admin, model, {**manifest, "sha256": "0" * 64}, sample)
    assert wrong_sha.status == 422
    assert "manifest.sha256" in wrong_sha.error["message"]

    truncated = await upload(hub, admin, model[:-100], manifest, sample)
    assert truncated.status == 422
    assert "manifest.sha256" in truncated.error["message"]

    missing = await upload(hub, admin, model, manifest, None)
    assert (missing.status, missing.error["details"]["field"]) == (400, "body.sample")

    bad_field = await upload(hub, admin, model, {**manifest, "labels": []}, sample)
    assert bad_field.status == 422
    assert "labels" in bad_field.error["message"]

    not_multipart = await api.call("POST", "/api/v1/models", token=admin, body={"x": 1})
    assert not_multipart.status == 400

    viewer = await upload(hub, await api.token("viewer"), model, manifest, sample)
    assert viewer.status == 403
    assert await hub.parts.store.models() == []


async def test_devices_download_with_their_certificate_and_resume(
    hub: Hub, api: ApiClient, enroll_device: Enroller
) -> None:
    model, manifest, sample = bundle_parts(VIBRATION)
    assert (await upload(hub, await api.token("admin"), model, manifest, sample)).status == 201
    paths, identity = await enroll_device()
    url = hub.config.hub_url + "/api/v1/device/models/vibration-anomaly/1.0.0/model.tflite"

    device = ssl.create_default_context(cafile=str(paths.ca_cert))
    device.load_cert_chain(paths.cert, paths.key)
    anonymous = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=device) as whole:
            assert whole.status == 200
            assert await whole.read() == model
        async with session.get(url, ssl=device, headers={"Range": "bytes=1000-"}) as rest:
            assert rest.status == 206
            assert await rest.read() == model[1000:]
        async with session.get(url, ssl=anonymous) as refused:
            assert refused.status == 401
        async with session.get(url.replace("1.0.0", "9.9.9"), ssl=device) as unknown:
            assert unknown.status == 404
        await hub.parts.store.revoke_device(identity.device_id, now=1.0, by="test")
        async with session.get(url, ssl=device) as revoked:
            assert revoked.status == 403
            assert "revoked" in (await revoked.json())["error"]["message"]


async def test_rollouts_that_cannot_start_are_refused(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin")
    unknown = await api.call(
        "POST", "/api/v1/rollouts", token=admin, body={"model": "nope", "version": "1"}
    )
    assert unknown.status == 422
    assert "no model nope 1" in unknown.error["message"]

    model, manifest, sample = bundle_parts(VIBRATION)
    assert (await upload(hub, admin, model, manifest, sample)).status == 201
    nobody = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=admin,
        body={"model": "vibration-anomaly", "version": "1.0.0", "selector": {"site": "mars"}},
    )
    assert nobody.status == 422
    assert "matches no enrolled device" in nobody.error["message"]

    share = await api.call(
        "POST",
        "/api/v1/rollouts",
        token=admin,
        body={"model": "vibration-anomaly", "version": "1.0.0", "canary_share": 1.5},
    )
    assert (share.status, share.error["details"]["field"]) == (400, "body.canary_share")
    missing = await api.call("GET", "/api/v1/rollouts/42", token=admin)
    assert missing.status == 404
