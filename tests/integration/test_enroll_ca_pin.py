"""The token pins the fleet CA by fingerprint, and the fingerprint is of one certificate:
a CA answer with another CA beside the fleet's (someone in between appending his own,
then answering with a server certificate of his) is refused before the request that
carries the token is sent, and nothing is saved. The same answer with the fleet CA alone
enrolls. A fake hub on loopback, the agent's `enroll` in process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography import x509

from edge.enroll import EnrollError, enroll
from edge.identity import DevicePaths
from hub.fleet import pki
from outpost import tls
from tests.support import PROFILES, free_port

DEVICE_ID = "dev-0123456789ab"


@dataclass(frozen=True)
class Ca:
    key: pki.CaKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return pki.cert_pem(self.cert)

    def server_files(self, folder: Path) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 issued by this CA, and its key."""
        key = pki.new_ec_key()
        issued = pki.issue(
            self.key,
            self.cert,
            common_name="hub",
            public_key=key.public_key(),
            days=1,
            server_names=["127.0.0.1"],
        )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "server.crt").write_bytes(issued.pem)
        (folder / "server.key").write_bytes(pki.key_pem(key))
        return folder / "server.crt", folder / "server.key"


def _ca(name: str) -> Ca:
    return Ca(*pki.make_ca(name))


@contextlib.asynccontextmanager
async def fake_hub(
    ca_answer: bytes, server: tuple[Path, Path], fleet: Ca, posted: list[dict[str, Any]]
) -> AsyncIterator[str]:
    """A hub that answers `ca_answer` for its CA, shows the `server` certificate, and
    enrolls every request with a certificate from `fleet` (recording it in `posted`)."""

    async def ca(_: web.Request) -> web.Response:
        return web.Response(body=ca_answer)

    async def enrolled(request: web.Request) -> web.Response:
        body = await request.json()
        posted.append(body)
        csr = x509.load_pem_x509_csr(body["csr"].encode())
        issued = pki.issue(
            fleet.key,
            fleet.cert,
            common_name=DEVICE_ID,
            public_key=csr.public_key(),  # type: ignore[arg-type]  # an EC key: the agent's
            days=1,
        )
        reply = {
            "certificate": issued.pem.decode(),
            "device_id": DEVICE_ID,
            "broker_url": "mqtts://127.0.0.1:1",
            "signing_public_key": "signing key",
            "name": "pinned",
        }
        return web.json_response(reply, status=201)

    app = web.Application()
    app.router.add_get("/api/v1/enroll/ca", ca)
    app.router.add_post("/api/v1/enroll", enrolled)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    context = tls.server_context(*server)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _token(url: str, fleet: Ca) -> str:
    claims = {"url": url, "caf": tls.fingerprint(fleet.pem), "exp": time.time() + 600}
    return jwt.encode(claims, "not the hub's key, and long enough for HS256", algorithm="HS256")


async def test_a_ca_answer_with_another_ca_beside_the_fleet_s_is_refused(tmp_path: Path) -> None:
    fleet, stranger = _ca("fleet CA"), _ca("someone in between")
    posted: list[dict[str, Any]] = []
    paths = DevicePaths(tmp_path / "agent")
    answer = fleet.pem + stranger.pem  # the fleet's first: the pin matches
    assert tls.fingerprint(answer) == tls.fingerprint(fleet.pem)

    async with fake_hub(answer, stranger.server_files(tmp_path / "s"), fleet, posted) as url:
        with pytest.raises(EnrollError) as raised:
            await enroll(_token(url, fleet), paths, PROFILES / "generic.toml")

    said = str(raised.value)
    assert said.startswith(f"the hub at {url} sent 2 PEM blocks (2 certificates) as its CA")
    assert "refusing to enroll" in said
    assert not raised.value.keep_key  # nothing was sent: the token is untouched
    assert posted == [], "the request carrying the token went to someone in between"
    assert not paths.ca_cert.exists()
    assert not paths.identity.exists()


async def test_the_fleet_ca_alone_enrolls_and_is_the_one_kept(tmp_path: Path) -> None:
    fleet = _ca("fleet CA")
    posted: list[dict[str, Any]] = []
    paths = DevicePaths(tmp_path / "agent")

    async with fake_hub(fleet.pem, fleet.server_files(tmp_path / "s"), fleet, posted) as url:
        identity = await enroll(_token(url, fleet), paths, PROFILES / "generic.toml")

    assert (identity.device_id, len(posted)) == (DEVICE_ID, 1)
    kept = x509.load_pem_x509_certificates(paths.ca_cert.read_bytes())
    assert kept == [fleet.cert]
