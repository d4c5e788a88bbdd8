"""A certificate renewed by courier bundle: a device with no link at all, whose
certificate is in the last third of its life, puts a renewal request in its bundle;
the hub renews it (the same checks as over HTTPS) and the ack bundle carries the new
certificate, which the device checks and keeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from edge.identity import Identity
from edge.renewal import renew_at
from hub.app import Hub
from tests.conftest import Enroller
from tests.integration.test_certificates import hub_toml, serial_of, until
from tests.integration.test_courier import (
    cli,
    offline_agent,
    proxy,  # noqa: F401 - the fixture
)
from tests.linkproxy import LinkProxy
from tests.support import AgentProcess

LIFETIME_S = 9.0  # the shortest the hub issues (0.0001 days), rounded up


@pytest.fixture
def hub_settings() -> str:
    return hub_toml(lifetime_s=LIFETIME_S)


async def test_a_certificate_is_renewed_by_bundle(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    await client.close()
    first = serial_of(paths)
    early = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "early")
    assert early.returncode == 0, early.stderr
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "early",
                   "--ack-out", tmp_path / "early-ack")  # fmt: skip
    assert "certificate renewed" not in imported.stdout  # its first two thirds: no request

    identity = Identity.load(paths)
    assert identity.cert_not_before is not None
    assert identity.cert_not_after is not None
    await until(renew_at(identity.cert_not_before, identity.cert_not_after) + 0.1)
    issued = len(await hub.parts.store.device_certs(device_id))
    unanswered = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "no-ack")
    assert unanswered.returncode == 0, unanswered.stderr
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "no-ack")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "renewal request waits: no ack written" in imported.stdout  # no --ack-out:
    assert len(await hub.parts.store.device_certs(device_id)) == issued  # nothing issued
    late = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "late")
    assert late.returncode == 0, late.stderr
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "late",
                   "--ack-out", tmp_path / "late-ack")  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "certificate renewed (in the ack bundle)" in imported.stdout
    assert serial_of(paths) == first  # not until the ack is imported

    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "late-ack")
    assert applied.returncode == 0, applied.stderr
    renewed = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert format(renewed.serial_number, "x") != first
    assert renewed.not_valid_after_utc.timestamp() > time.time()
    certs = {c.serial for c in await hub.parts.store.device_certs(device_id)}
    assert format(renewed.serial_number, "x") in certs
    assert Identity.load(paths).cert_not_after == renewed.not_valid_after_utc.timestamp()
    assert agent.process.poll() is None
