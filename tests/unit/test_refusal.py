"""Unit tests of edge/refusal.py: which errors are the broker refusing our certificate,
and the link's refused states, said once and waited out slowly (the real broker's
refusals: tests/integration/test_refused_link.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiomqtt
import pytest

from edge import refusal
from edge.identity import DevicePaths, Identity
from edge.renewal import RenewalRefusedError
from outpost.mqtt import LinkState
from tests.support import eventually

# What the ssl module says, as paho logs it and as aiomqtt raises it.
REVOKED_READ = (
    "failed to receive on socket: [SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert "
    "certificate revoked (_ssl.c:2580)"
)
EXPIRED_HANDSHAKE = (
    "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired (_ssl.c:1006)"
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (REVOKED_READ, refusal.REVOKED),
        (aiomqtt.MqttError(EXPIRED_HANDSHAKE), refusal.EXPIRED),
        # This side refusing the broker's certificate is not the broker refusing ours.
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has "
            "expired (_ssl.c:1006)",
            None,
        ),
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1006)", None),
        (aiomqtt.MqttError("Operation timed out"), None),
        (aiomqtt.MqttError("[Errno 111] Connection refused"), None),
    ],
)
def test_only_the_brokers_alerts_about_our_certificate_count(
    error: BaseException | str, kind: str | None
) -> None:
    assert refusal.classify(error) == kind


def device(tmp_path: Path, *, not_after: float) -> DevicePaths:
    paths = DevicePaths(tmp_path / "device")
    paths.identity_dir.mkdir(parents=True)
    Identity(
        device_id="dev-0123456789ab",
        broker_url="mqtts://127.0.0.1:1",
        hub_url="https://127.0.0.1:1",
        enrolled_at=time.time(),
        cert_not_after=not_after,
        cert_not_before=not_after - 86400,
    ).save(paths)
    return paths


def agent_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test" and r.levelno == level]


async def test_a_revocation_is_said_once_and_each_attempt_waits_retry_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = LinkState(logging.getLogger("test"), "broker link")
    refusals = refusal.Refusals(link, device(tmp_path, not_after=time.time() + 3600), 0.01)

    for _ in range(3):
        refusals.new_attempt()
        assert await refusals.after_failure(aiomqtt.MqttError(REVOKED_READ)) is True

    (error,) = agent_lines(caplog, logging.ERROR)
    assert error.startswith("broker link revoked: this device's certificate was revoked")
    assert len(agent_lines(caplog, logging.DEBUG)) == 2  # "still revoked"
    assert refusals.summary() == "revoked: needs outpost-agent enroll"
    report = refusals.report()
    assert report["state"] == "revoked"
    assert report["action"] == refusal.ENROLL_ACTION
    # A passing error is left to the usual back-off.
    refusals.new_attempt()
    assert await refusals.after_failure(aiomqtt.MqttError("Operation timed out")) is False


async def test_paho_s_line_about_the_alert_ends_the_attempt_and_becomes_a_debug_line(
    tmp_path: Path,
) -> None:
    link = LinkState(logging.getLogger("test"), "broker link")
    refusals = refusal.Refusals(link, device(tmp_path, not_after=time.time() + 3600), 600)
    logger = logging.getLogger("test.mqtt")
    logger.setLevel(logging.INFO)
    refused = refusals.new_attempt()
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        1,
        "failed to receive on socket: %s",
        (REVOKED_READ.split(": ", 1)[1],),
        None,
    )

    assert refusals.watch_log(record) is False  # dropped: debug, below the logger's level
    assert record.levelname == "DEBUG"
    await asyncio.wait_for(refused.wait(), 5)
    # The attempt's error is then aiomqtt's own, classified by what paho said.
    assert refusal.classify(aiomqtt.MqttError("the broker refused it")) is None


async def test_an_expired_certificate_waits_for_its_renewal_not_for_retry_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = LinkState(logging.getLogger("test"), "broker link")
    paths = device(tmp_path, not_after=time.time() - 5)
    refusals = refusal.Refusals(link, paths, 600)
    refusals.new_attempt()
    # A broker that words it otherwise: our own clock says the certificate expired.
    waiting = asyncio.create_task(refusals.after_failure(aiomqtt.MqttError("bad certificate")))

    async def expired() -> bool:
        return link.state == refusal.EXPIRED

    await eventually(expired, what="the expired state")  # the expiry is read in a thread
    assert refusals.summary() == "expired: renewing the certificate"

    await refusals.renewed(Identity.load(paths))

    assert await asyncio.wait_for(waiting, 5) is True


async def test_the_brokers_expired_alert_asks_for_a_renewal_now(tmp_path: Path) -> None:
    """Even when this device's clock says the certificate is good for an hour more (a
    clock behind): the broker's clock is the one that counts."""
    link = LinkState(logging.getLogger("test"), "broker link")
    refusals = refusal.Refusals(link, device(tmp_path, not_after=time.time() + 3600), 600)
    urged: list[bool] = []
    refusals.on_expired = lambda: urged.append(True)
    refusals.new_attempt()
    revoked = "[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked"
    expired = "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired"

    first = asyncio.create_task(refusals.after_failure(aiomqtt.MqttError(revoked)))
    await eventually(lambda: asyncio.sleep(0, link.state == refusal.REVOKED), what="revoked")
    assert urged == []  # the control: a revocation asks for nothing
    first.cancel()
    refusals.new_attempt()
    second = asyncio.create_task(refusals.after_failure(aiomqtt.MqttError(expired)))
    await eventually(lambda: asyncio.sleep(0, link.state == refusal.EXPIRED), what="expired")
    assert urged == [True]
    second.cancel()


async def test_a_refused_renewal_of_an_expired_certificate_means_enrolling_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = LinkState(logging.getLogger("test"), "broker link")
    refusals = refusal.Refusals(link, device(tmp_path, not_after=time.time() - 5), 0.01)
    refusals.new_attempt()
    assert await refusals.after_failure(aiomqtt.MqttError(EXPIRED_HANDSHAKE)) is True
    assert link.state == refusal.EXPIRED

    await refusals.renewal_refused(
        RenewalRefusedError(403, "the hub refused to renew the certificate (403): ... grace")
    )

    assert link.state == refusal.PAST_GRACE
    assert refusals.report()["action"] == refusal.ENROLL_ACTION
    (warning,) = agent_lines(caplog, logging.WARNING)
    (error,) = agent_lines(caplog, logging.ERROR)
    assert warning.startswith("broker link expired: ")
    assert error.startswith("broker link expired-past-grace: ")
    assert "outpost-agent enroll --token NEW_TOKEN" in error
