"""Certificates that outlive disconnections, and revocation, against a real hub, its
Mosquitto and real agent processes: renewal before expiry, renewal after expiry within
the grace period, refusal past it, and a revoked device that can neither connect nor
renew."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge import renewal
from edge.enroll import load_device_key, make_csr
from edge.identity import DevicePaths, Identity
from edge.renewal import RenewalRefusedError, renew
from hub import cli
from hub.app import Hub
from hub.broker.managed import crl_file
from hub.fleet import certificates, pki
from hub.paths import HubPaths
from hub.store import Device, HubStore
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_broker_security import _mqtt_connect_over_tls
from tests.linkproxy import LinkProxy
from tests.support import REPO, AgentProcess, device_online, eventually

DAY_S = 86400.0


def hub_toml(*, lifetime_s: float, grace_days: float = 30.0) -> str:
    return (
        f"device_cert_days = {lifetime_s / DAY_S!r}\n"
        f"device_cert_grace_days = {grace_days!r}\n"
        "api_rate_burst = 1000\n"
    )


def serial_of(paths: DevicePaths) -> str:
    return format(x509.load_pem_x509_certificate(paths.cert.read_bytes()).serial_number, "x")


async def until(moment: float) -> None:
    """Wait out a certificate's lifetime (the one wait here that is not a condition)."""
    # Polled on the wall clock certificates use, not slept in one go: a virtual machine's
    # clock may be stepped back meanwhile, and the hub judges expiry by that clock.
    while time.time() < moment:
        await asyncio.sleep(min(0.2, moment - time.time()))  # time must pass: a poll till then


async def holds(value: bool) -> bool:
    """For `eventually` around a condition that needs no awaiting."""
    return value


async def offline(hub: Hub, device_id: str) -> bool:
    return not await device_online(hub, device_id)


def hellos(hub: Hub) -> int:
    return hub.parts.ingest.outcomes[("hello", "accepted")]


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run a command without blocking the hub that runs in this event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def post_renew(hub: Hub, body: dict[str, Any]) -> tuple[int, Any]:
    status, reply, _ = await post_renew_answer(hub, body)
    return status, reply


async def post_renew_answer(hub: Hub, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    """The renewal route's status, JSON body and headers."""
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{hub.config.hub_url}/api/v1/enroll/renew", data=json.dumps(body), ssl=context
        ) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


def device_context(paths: DevicePaths) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_cert))
    context.load_cert_chain(paths.cert, paths.key)
    return context


async def audit_actions(api: ApiClient) -> list[tuple[str, int, dict[str, Any]]]:
    reply = await api.call("GET", "/api/v1/audit", token=await api.token("admin"))
    return [(e["action"], e["status"], e["detail"]) for e in reply.body["items"]]


# ------------------------------------------------------------------- renewal


# Long enough for an agent to start and connect on a busy machine before its first
# certificate is due.
@pytest.mark.parametrize("hub_settings", [pytest.param(hub_toml(lifetime_s=20), id="20s")])
async def test_agent_renews_before_expiry_and_reconnects_with_the_new_certificate(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    first_serial = serial_of(paths)
    proxy = LinkProxy(hub.config.mqtt_port)
    await proxy.start()
    try:
        # A quick first retry: this test is about the certificate, not a fleet's storm.
        paths.config.write_text(
            f'[agent]\nbroker = "mqtts://127.0.0.1:{proxy.port}"\nreconnect_spread_s = 1\n'
        )
        agent = agents(paths)
        # Online with its first certificate, whatever the start took: past its expiry
        # this would be the grace-period test below.
        await eventually(
            lambda: device_online(hub, identity.device_id),
            timeout=identity.cert_not_after - time.time(),
            what="device online before its certificate expires",
        )

        async def renewed() -> bool:
            device = await hub.parts.store.device(identity.device_id)
            assert device is not None
            # The certificate file is written before identity.json: both must be there.
            return (
                device.cert_serial != first_serial
                and device.cert_serial == serial_of(paths)
                and Identity.load(paths).cert_not_after > identity.cert_not_after
            )

        # Due at two thirds of its life: about 13 s after enrollment.
        await eventually(renewed, timeout=20, what="a renewal, in the registry and on the device")
        assert Identity.load(paths).cert_not_before is not None
        # Logged just after the file is in place: read until it is there.
        await eventually(
            lambda: holds("certificate renewed" in agent.output()), what="the renewal logged"
        )

        # The first certificate has expired now: only the new one can get the agent back.
        await until(identity.cert_not_after + 0.5)
        before = hellos(hub)
        proxy.cut()
        # A deadline, not a speed: only the new certificate can get it back, however late.
        await eventually(lambda: holds(hellos(hub) > before), timeout=30, what="a new session")
        assert await device_online(hub, identity.device_id)
    finally:
        await proxy.close()


@pytest.mark.parametrize(
    "hub_settings", [pytest.param(hub_toml(lifetime_s=9, grace_days=1), id="9s-grace-1d")]
)
async def test_a_device_back_after_expiry_renews_within_the_grace_period(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess], api: ApiClient
) -> None:
    paths, identity = await enroll_device()
    first_serial = serial_of(paths)
    await until(identity.cert_not_after + 0.5)  # offline the whole life of its certificate
    assert await _mqtt_connect_over_tls(hub, device_context(paths)) != "connack"

    agent = agents(paths)

    # Its first attempt, with the expired certificate, is refused as the renewal goes on;
    # the renewal cuts the agent's slow retry after a refusal (refused_retry_s) short,
    # and the next attempt uses the new certificate.
    await eventually(
        lambda: device_online(hub, identity.device_id), timeout=30, what="device back online"
    )
    assert serial_of(paths) != first_serial
    assert "certificate expired at" in agent.output()
    renewals = [a for a in await audit_actions(api) if a[0] == "device.renew"]
    assert renewals[-1][1] == 200
    assert renewals[-1][2]["previous_serial"] == first_serial


@pytest.mark.parametrize(
    "hub_settings", [pytest.param(hub_toml(lifetime_s=9, grace_days=0), id="9s-no-grace")]
)
async def test_past_the_grace_period_renewal_is_refused(
    hub: Hub, enroll_device: Enroller, api: ApiClient
) -> None:
    paths, identity = await enroll_device()
    kept = paths.cert.read_bytes()
    await until(identity.cert_not_after + 0.5)

    code, out, err = await run_cli("edge.cli", "renew", "--data", str(paths.root))

    assert code == 2, out + err
    assert "refused to renew the certificate (403)" in err
    assert "more than the grace period ago (device_cert_grace_days = 0," in err
    assert "new bootstrap token" in err
    assert paths.cert.read_bytes() == kept, "a refused renewal changed the certificate"
    assert (await audit_actions(api))[0][:2] == ("device.renew", 403)


async def test_outpost_agent_renew_renews_at_once(hub: Hub, enroll_device: Enroller) -> None:
    paths, identity = await enroll_device()
    first_serial = serial_of(paths)

    code, out, err = await run_cli("edge.cli", "renew", "--data", str(paths.root))

    assert code == 0, err
    assert f"renewed the certificate of {identity.device_id}; valid until" in out
    assert serial_of(paths) != first_serial
    certs = await hub.parts.store.device_certs(identity.device_id)
    assert [(c.serial, c.reason) for c in certs] == [
        (first_serial, "enroll"),
        (serial_of(paths), "renew"),
    ]
    device = await hub.parts.store.device(identity.device_id)
    assert device is not None
    assert device.cert_serial == serial_of(paths)


async def test_the_brokers_word_that_it_expired_renews_whatever_the_device_clock_says(
    hub: Hub, enroll_device: Enroller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board without a clock, back on a network without NTP: its clock runs so far
    behind that its certificate is not due for renewal by it, while the broker, by the
    hub's clock, refuses it as expired. The link's word (`urge`) renews at once."""
    paths, _ = await enroll_device()
    first_serial = serial_of(paths)

    class Behind:  # the device's clock, as the renewer reads it: a year behind
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def time() -> float:
            return time.time() - 365 * 86400

    monkeypatch.setattr(renewal, "time", Behind())
    renewer = renewal.CertRenewer(paths)
    running = asyncio.create_task(renewer.run())
    try:

        async def looked() -> bool:
            return renewer.looks >= 1

        await eventually(looked, timeout=30, what="its first look")
        assert renewer.renewals == 0  # the control: by its clock, not due

        renewer.urge()

        async def renewed() -> bool:
            return renewer.renewals == 1 and serial_of(paths) != first_serial

        await eventually(renewed, timeout=30, what="the renewal the broker's word asked for")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_grace_period_counts_from_the_newest_certificate_expiry(
    hub: Hub, enroll_device: Enroller
) -> None:
    paths, identity = await enroll_device()
    renewals = certificates.Renewals.load(hub.paths, hub.config, hub.parts.store)
    cert = paths.cert.read_bytes()
    csr = make_csr(load_device_key(paths))
    grace_s = hub.config.device_cert_grace_days * DAY_S
    (issued,) = await hub.parts.store.device_certs(identity.device_id)

    with pytest.raises(
        certificates.RenewalRefusedError, match="more than the grace period ago"
    ) as late:
        await renewals.renew(certificate_pem=cert, csr_pem=csr, now=issued.not_after + grace_s + 1)
    renewed = await renewals.renew(
        certificate_pem=cert, csr_pem=csr, now=issued.not_after + grace_s - 1
    )

    assert late.value.status == 403
    assert renewed.device_id == identity.device_id
    assert renewed.previous_serial == issued.serial


async def test_renewal_refusals_name_what_was_wrong(
    hub: Hub, enroll_device: Enroller, tmp_path: Path
) -> None:
    paths, identity = await enroll_device()
    cert = paths.cert.read_text()
    own_key = pki.new_ec_key()
    # A certificate from another CA, for the same device id.
    rogue_key, rogue_ca = pki.make_ca("Rogue CA")
    rogue = pki.issue(
        rogue_key,
        rogue_ca,
        common_name=identity.device_id,
        public_key=own_key.public_key(),
        days=1,
    )
    hub_key = serialization.load_pem_private_key(hub.paths.client_key.read_bytes(), None)
    assert isinstance(hub_key, ec.EllipticCurvePrivateKey)
    hub_cert = hub.paths.client_cert.read_text()
    csr = make_csr(load_device_key(paths)).decode()
    cases = [
        ({"certificate": cert, "csr": make_csr(own_key).decode()}, 403, "not the certificate's"),
        ({"certificate": rogue.pem.decode(), "csr": make_csr(own_key).decode()}, 403, "CA"),
        ({"certificate": hub_cert, "csr": make_csr(hub_key).decode()}, 403, "not a device"),
        ({"certificate": "not a certificate", "csr": csr}, 422, "not a valid PEM"),
        ({"certificate": cert, "csr": "not a csr"}, 422, "CSR"),
    ]
    for body, status, words in cases:
        got, reply = await post_renew(hub, body)
        assert (got, words in reply["error"]["message"]) == (status, True), reply
    assert serial_of(paths) == format(
        x509.load_pem_x509_certificate(cert.encode()).serial_number, "x"
    )


async def test_a_device_held_off_for_flooding_cannot_renew_until_the_hold_ends(
    hub: Hub, enroll_device: Enroller
) -> None:
    """Its new serial would not be in the CRL that holds it off: it would be back in."""
    paths, identity = await enroll_device()
    body = {"certificate": paths.cert.read_text(), "csr": make_csr(load_device_key(paths)).decode()}
    now = time.time()
    assert await hub.parts.store.hold_device(identity.device_id, now=now, until=now + 600)
    status, reply, headers = await post_renew_answer(hub, body)
    retry_after = int(headers["Retry-After"])
    assert status == 429
    assert "held off for flooding" in reply["error"]["message"]
    assert 500 < retry_after <= 600
    # The agent's renewer reads the wait too, and keeps to it (tests/unit/test_renewal.py).
    with pytest.raises(renewal.RenewalError) as refused:
        await renew(paths, identity)
    assert refused.value.retry_after_s is not None
    assert 500 < refused.value.retry_after_s <= 600
    device = await hub.parts.store.device(identity.device_id)
    assert device is not None
    assert device.cert_serial == serial_of(paths)  # nothing issued

    # The control: once the hold is over, the same request renews.
    assert await hub.parts.store.hold_device(identity.device_id, now=now, until=now - 1)
    got, reply = await post_renew(hub, body)
    assert got == 200, reply


async def test_a_device_renews_at_most_once_an_hour(hub: Hub, enroll_device: Enroller) -> None:
    """Each renewal adds a serial every later CRL of the device lists: one that renews
    in a loop must not grow them without bound (an agent renews at 2/3 of 90 days)."""
    paths, identity = await enroll_device()
    body = {"certificate": paths.cert.read_text(), "csr": make_csr(load_device_key(paths)).decode()}

    first, _ = await post_renew(hub, body)  # the control: right after enrollment, it may
    again, reply = await post_renew(hub, body)

    assert first == 200
    assert again == 429
    assert "renewed its certificate" in reply["error"]["message"]
    certs = await hub.parts.store.device_certs(identity.device_id)
    assert [c.reason for c in certs] == ["enroll", "renew"]


# ------------------------------------------------------------------- revocation


async def test_a_revoked_device_is_dropped_and_can_neither_reconnect_nor_renew(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess], api: ApiClient
) -> None:
    paths, identity = await enroll_device()
    other_paths, _ = await enroll_device()
    # A quick first retry (the default spreads a fleet's over 10 s): this test is about
    # the revocation, not a fleet's storm.
    paths.config.write_text("[agent]\nreconnect_spread_s = 1\nreconnect_max_delay = 2\n")
    agent = agents(paths)
    await eventually(
        lambda: device_online(hub, identity.device_id), timeout=15, what="device online"
    )

    reply = await api.call(
        "POST", f"/api/v1/devices/{identity.device_id}/revoke", token=await api.token("admin")
    )

    assert reply.status == 200, reply.body
    assert reply.body["broker_reloaded"] is True
    assert reply.body["disconnected"] is True
    assert reply.body["certificates"] == 1
    await eventually(
        lambda: holds("broker link disconnected" in agent.output()),
        timeout=15,
        what="the agent's connection dropped",
    )
    # It tries again at once, and the broker refuses its certificate as revoked (the
    # agent says so plainly: tests/integration/test_refused_link.py).
    await eventually(
        lambda: holds("broker link revoked: this device's certificate was" in agent.output()),
        timeout=30,
        what="the broker refusing the revoked certificate",
    )
    assert await _mqtt_connect_over_tls(hub, device_context(paths)) != "connack"
    assert await offline(hub, identity.device_id)
    shown = await api.call(
        "GET", f"/api/v1/devices/{identity.device_id}", token=await api.token("viewer")
    )
    fields = ("online", "revoked", "revoked_at", "revoked_by")
    assert {k: shown.body.get(k, "absent") for k in fields} == {
        "online": False,
        "revoked": True,
        "revoked_at": reply.body["revoked_at"],
        "revoked_by": "tester",  # the admin token's subject
    }
    with pytest.raises(RenewalRefusedError, match="revoked") as refused:
        await renew(paths, identity)
    assert refused.value.status == 403
    crl = x509.load_pem_x509_crl(crl_file(hub.paths).read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial_of(paths), 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(serial_of(other_paths), 16)) is None
    actions = [a[:2] for a in await audit_actions(api)]
    assert ("device.revoke", 200) in actions
    assert ("device.renew", 403) in actions


async def test_revoke_command_beside_a_running_hub_drops_the_device(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    other_paths, bystander = await enroll_device()
    third_paths, _ = await enroll_device()  # no agent: its certificate probes the door
    # The probe that must fail afterwards succeeds now (before the agent runs: a
    # connection with its certificate would take its session over).
    assert await _mqtt_connect_over_tls(hub, device_context(paths)) == "connack"
    agents(paths)
    agents(other_paths)
    await eventually(
        lambda: device_online(hub, identity.device_id), timeout=15, what="device online"
    )
    await eventually(
        lambda: device_online(hub, bystander.device_id), timeout=15, what="bystander online"
    )
    before = hellos(hub)

    code, out, err = await run_cli(
        "hub.cli", "device", "revoke", "--data", str(hub.paths.root), identity.device_id
    )

    assert code == 0, err
    assert f"revoked {identity.device_id}: 1 certificate(s) in the CRL" in out
    assert "the broker reloaded the CRL; its connection, if any, was closed" in out
    # The command found the running hub through its data folder's lock, and the hub's
    # broker refused a revoked certificate of the device as revoked before it said so.
    assert "proven: the broker refuses its certificates as revoked" in out
    assert await offline(hub, identity.device_id)
    revoked = await hub.parts.store.device(identity.device_id)
    assert revoked is not None
    assert revoked.revoked_by == f"cli:{getpass.getuser()}"
    assert await _mqtt_connect_over_tls(hub, device_context(paths)) != "connack"
    # The rest of the fleet is untouched: another certificate still connects, and the
    # bystander's session goes on.
    assert await _mqtt_connect_over_tls(hub, device_context(third_paths)) == "connack"
    await eventually(
        lambda: device_online(hub, bystander.device_id), timeout=15, what="bystander online"
    )
    assert hellos(hub) == before  # its session was never dropped

    code, out, err = await run_cli(
        "hub.cli", "device", "revoke", "--data", str(hub.paths.root), identity.device_id
    )
    assert code == 0, err
    assert f"{identity.device_id} was already revoked (at " in out
    assert "proven: the broker refuses its certificates as revoked" in out


def test_revoke_command_with_the_hub_stopped(hub_paths: HubPaths, capsys: Any) -> None:
    store = HubStore(hub_paths.database)
    try:
        for device_id, serial in (("dev-aaaaaaaaaaaa", "ab12"), ("dev-bbbbbbbbbbbb", "cd34")):
            asyncio.run(store.add_device(_device(device_id, serial)))
    finally:
        store.close()

    code = cli.main(["device", "revoke", "--data", str(hub_paths.root), "dev-aaaaaaaaaaaa"])
    unknown = cli.main(["device", "revoke", "--data", str(hub_paths.root), "dev-nonesuch"])

    out, err = capsys.readouterr()
    assert code == 0
    assert "the hub is not running: its broker reads the CRL when it starts" in out
    crl = x509.load_pem_x509_crl(crl_file(hub_paths).read_bytes())
    assert [r.serial_number for r in crl] == [0xAB12]
    assert unknown == 2
    assert "no device 'dev-nonesuch'" in err


def test_devices_command_shows_revoked_devices_with_when_and_by_whom(
    hub_paths: HubPaths, capsys: Any
) -> None:
    store = HubStore(hub_paths.database)
    try:
        for device_id, serial in (("dev-aaaaaaaaaaaa", "ab12"), ("dev-bbbbbbbbbbbb", "cd34")):
            asyncio.run(store.add_device(_device(device_id, serial)))
    finally:
        store.close()
    before = time.time()
    assert cli.main(["device", "revoke", "--data", str(hub_paths.root), "dev-aaaaaaaaaaaa"]) == 0
    capsys.readouterr()

    table_code = cli.main(["devices", "--data", str(hub_paths.root)])
    table = capsys.readouterr().out
    json_code = cli.main(["devices", "--data", str(hub_paths.root), "--json"])
    rows = {d["id"]: d for d in json.loads(capsys.readouterr().out)}

    assert (table_code, json_code) == (0, 0)
    header, *lines = table.splitlines()
    assert header.split()[:4] == ["NAME", "DEVICE", "PROFILE", "STATE"]
    # Revoked, not "offline": it cannot come back.
    assert [line.split()[1:4] for line in lines] == [
        ["dev-aaaaaaaaaaaa", "generic", "revoked"],
        ["dev-bbbbbbbbbbbb", "generic", "offline"],
    ]
    revoked, other = rows["dev-aaaaaaaaaaaa"], rows["dev-bbbbbbbbbbbb"]
    fields = ("online", "revoked", "revoked_by")
    assert {k: revoked.get(k, "absent") for k in fields} == {
        "online": False,
        "revoked": True,
        "revoked_by": f"cli:{getpass.getuser()}",
    }
    assert before <= revoked.get("revoked_at", 0) <= time.time()
    assert {k: other.get(k, "absent") for k in (*fields, "revoked_at")} == {
        "online": False,
        "revoked": False,
        "revoked_by": None,
        "revoked_at": None,
    }


def _device(device_id: str, serial: str) -> Device:
    return Device(
        device_id=device_id,
        profile="generic",
        labels={},
        online=False,
        last_seen=None,
        last_heartbeat=None,
        heartbeat_interval=None,
        agent_version=None,
        capabilities={},
        load={},
        enrolled_at=time.time(),
        cert_serial=serial,
        cert_not_before=time.time(),
        cert_not_after=time.time() + 86400,  # a CRL lists it
    )
