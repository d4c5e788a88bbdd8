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

# Long enough for an agent to start and a bundle to be exported on a busy machine
# before its certificate is due (at 9 s, 5.7 s after enrollment), and for the
# renewed one to outlive the commands after it.
LIFETIME_S = 20.0


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


async def test_a_renewed_certificate_travels_until_the_device_presents_it(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The ack carrying a renewed certificate is lost on the way: `bundle export` carries
    the same certificate (not a new one) until a bundle of the device presents it; the
    late ack, older than the bundle applied since, installs nothing."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy)
    await client.close()
    first = serial_of(paths)
    identity = Identity.load(paths)
    assert identity.cert_not_before is not None
    assert identity.cert_not_after is not None
    await until(renew_at(identity.cert_not_before, identity.cert_not_after) + 0.1)
    late = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "late")
    assert late.returncode == 0, late.stderr
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "late",
                   "--ack-out", tmp_path / "lost-ack")  # fmt: skip
    assert "certificate renewed (in the ack bundle)" in imported.stdout, imported.stdout
    issued = {c.serial for c in await hub.parts.store.device_certs(device_id)}

    out = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
              "--to", tmp_path / "export")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert {c.serial for c in await hub.parts.store.device_certs(device_id)} == issued
    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "export")
    assert applied.returncode == 0, applied.stderr
    assert "certificate renewed, valid until" in applied.stdout
    serial = serial_of(paths)
    assert serial != first
    assert serial in issued  # the certificate the hub renewed, carried again
    lost = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "lost-ack")
    assert lost.returncode == 0, lost.stderr
    assert "certificate renewed" not in lost.stdout  # older than the bundle applied:
    assert "certificate are left alone" in lost.stdout  # its certificate is not installed

    # The device presents it (no ack asked for: no renewal either): it is delivered.
    shown = cli("agent", "bundle", "export", "--data", paths.root, "--to", tmp_path / "shown")
    assert shown.returncode == 0, shown.stderr
    taken = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "shown")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    after = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
                "--to", tmp_path / "after")  # fmt: skip
    assert after.returncode == 0, after.stdout + after.stderr
    nothing = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "after")
    assert nothing.returncode == 0, nothing.stderr
    assert "certificate renewed" not in nothing.stdout
    assert serial_of(paths) == serial
    assert agent.process.poll() is None
