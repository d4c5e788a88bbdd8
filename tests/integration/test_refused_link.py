"""An agent the broker refuses for good, against a real hub, its Mosquitto and real agent
processes: revoked, or expired past the grace period. It says so once, plainly, with
the command that mends it; shows it in /v1/status and the systemd status line; retries
every `refused_retry_s` rather than in a tight loop; and keeps serving local inference
and keeping its store."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from edge.inference.directory import ModelDirectory
from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_certificates import hub_toml, until
from tests.integration.test_local_inference import SURFACE, VIBRATION, sample_of, start_agent
from tests.integration.test_store_forward import wait_socket, write_agent_settings
from tests.integration.test_systemd import NotifyListener
from tests.local_api import LocalClient
from tests.support import SHIPPED_MODELS, AgentProcess, device_online, eventually

ENROLL = "outpost-agent enroll --token NEW_TOKEN --data NEW_FOLDER --profile"
# Attempts come every 0.5 s here, where the agent before this fix logged an error for
# each (and waited out aiomqtt's 10 s for each, so a test could hardly see the loop).
FAST = "reconnect_max_delay = 0.5\nrefused_retry_s = 0.5\n"


def log_lines(agent: AgentProcess) -> list[dict[str, Any]]:
    """The agent's JSON log lines (a last line still being written is left out)."""
    lines = []
    for raw in agent.output().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def said(agent: AgentProcess, level: str) -> list[str]:
    return [line["msg"] for line in log_lines(agent) if line["level"] == level]


def said_about(agent: AgentProcess, word: str) -> list[str]:
    """Warnings and errors that mention `word`: the agent before this fix logged paho's
    "... [SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked" at
    each attempt. (Not every error: aiomqtt now and then logs an asyncio callback error
    when the broker drops the socket mid-connect, which is none of this.)"""
    return [
        line["msg"]
        for line in log_lines(agent)
        if line["level"] in ("warning", "error") and word in line["msg"].lower()
    ]


def attempts_refused(agent: AgentProcess, state: str) -> int:
    """Attempts the broker refused since the link entered `state`: the first is said
    as a change, each later one as a debug line."""
    msgs: list[str] = [line["msg"] for line in log_lines(agent)]
    first = sum(m.startswith(f"broker link {state}:") for m in msgs)
    return first + sum(m.startswith(f"broker link still {state}:") for m in msgs)


async def link_state(client: LocalClient) -> str | None:
    link = (await client.status()).get("link")
    return link["state"] if isinstance(link, dict) else None


async def revoke(api: ApiClient, device_id: str) -> None:
    reply = await api.call(
        "POST", f"/api/v1/devices/{device_id}/revoke", token=await api.token("admin")
    )
    assert reply.status == 200, reply.body


async def results_held(client: LocalClient) -> int:
    return int((await client.status())["store"]["streams"]["results"]["records"])


async def assert_serves_locally(client: LocalClient, records: int) -> None:
    """Inference answers, and the store takes and keeps records, link or no link."""
    before = await results_held(client)
    status, body = await client.append("results", [{"n": n} for n in range(records)])
    assert status == 201, body
    folder = SHIPPED_MODELS[0]
    status, answer = await client.infer(
        VIBRATION, {"input": sample_of(folder).input, "dtype": "int8"}
    )
    assert status == 200, answer
    assert answer["label"] == sample_of(folder).expected.label
    # report = "all": the inference is a result too. Nothing can leave for the hub.
    assert await results_held(client) == before + records + 1


async def test_a_revoked_agent_says_so_once_retries_slowly_and_serves_locally(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess], api: ApiClient
) -> None:
    paths, device_id, agent, client = await start_agent(
        enroll_device, agents, FAST + '[agent.inference]\nreport = "all"\n'
    )
    try:
        await eventually(lambda: device_online(hub, device_id), timeout=15, what="online")

        await revoke(api, device_id)

        # An attempt whose TLS 1.3 alert is lost with the socket waits out aiomqtt's 10 s
        # for a CONNACK, then backs off, before the next one is refused as revoked.
        await eventually(lambda: _is(link_state(client), "revoked"), timeout=45, what="revoked")
        held = await results_held(client)  # from here on nothing leaves for the hub
        await assert_serves_locally(client, 20)
        # Several refused attempts: the agent of before logged an error at each one.
        await eventually(
            lambda: _holds(attempts_refused(agent, "revoked") >= 6),
            timeout=30,
            what="six refused attempts",
        )
        lines = log_lines(agent)  # one reading for every count below
        msgs = [line["msg"] for line in lines]
        errors = [
            line["msg"]
            for line in lines
            if line["level"] in ("warning", "error") and "revoked" in line["msg"].lower()
        ]
        # Said once per entry into the state, never per attempt: an attempt whose alert
        # is lost ends as a passing error ("disconnected"), and the next refusal enters
        # "revoked" again, said again.
        changes = [
            m.split(":", 1)[0].removeprefix("broker link ")
            for m in msgs
            if m.startswith(("broker link revoked:", "broker link disconnected:"))
        ]
        after = changes[changes.index("revoked") :]
        entered_again = sum(pair == ("disconnected", "revoked") for pair in pairwise(after))
        assert len(errors) == 1 + entered_again, (errors, after)
        refused = sum(
            m.startswith(("broker link revoked:", "broker link still revoked:")) for m in msgs
        )
        assert 2 * len(errors) <= refused, (errors, refused)  # the agent of before: one each
        assert errors[0].startswith(
            "broker link revoked: this device's certificate was revoked by the hub."
        )
        assert f"{ENROLL} {paths.profile}` (a fresh data folder" in errors[0]
        assert "the agent tries the broker again every 0.5 s" in errors[0]
        assert errors == [
            line["msg"]
            for line in lines
            if line["level"] == "error" and line["msg"].startswith("broker link")
        ]

        # Read while revoked: a lost alert has it "disconnected" until the next refusal.
        status = await eventually(
            lambda: _revoked_status(client), timeout=45, what="the status revoked"
        )
        link = status["link"]
        assert link["action"] == "needs outpost-agent enroll with a new bootstrap token"
        assert link["detail"] == errors[0].removeprefix("broker link revoked: ")
        assert link["since"] <= status["time"]
        # The results made while refused are all still there after the attempts.
        assert await results_held(client) == held + 20 + 1
        assert status["models"] == {SURFACE: "ready", VIBRATION: "ready"}
    finally:
        await client.close()


async def test_a_revoked_agent_waits_refused_retry_s_and_says_it_in_its_status_line(
    hub: Hub, enroll_device: Enroller, api: ApiClient, tmp_path: Any
) -> None:
    paths, identity = await enroll_device()
    # A short back-off cap for passing errors: the refusal must not use it.
    write_agent_settings(paths, "reconnect_max_delay = 0.5\n")
    listener = NotifyListener()
    agent = AgentProcess(
        paths.root, log=tmp_path / "agent.log", env={"NOTIFY_SOCKET": listener.name}
    )
    client = None
    try:
        await listener.until("READY", timeout=30)
        client = await wait_socket(paths, agent)
        await eventually(lambda: device_online(hub, identity.device_id), timeout=15, what="online")

        await revoke(api, identity.device_id)

        async def status_line_says_revoked() -> bool:
            fields = await listener.until("STATUS", timeout=30)
            return fields["STATUS"].startswith(
                "broker link revoked: needs outpost-agent enroll; store "
            )

        await eventually(status_line_says_revoked, timeout=40, what="the STATUS line")
        link = (await client.status())["link"]
        assert link["state"] == "revoked"
        assert link["retry_at"] - link["since"] == pytest.approx(600, abs=1)  # the default
        # One attempt refused in all the time the status line took (seconds): no loop.
        assert attempts_refused(agent, "revoked") == 1
        assert len(said_about(agent, "revoked")) == 1
    finally:
        if client is not None:
            await client.close()
        agent.stop()
        listener.close()


@pytest.mark.parametrize(
    "hub_settings", [pytest.param(hub_toml(lifetime_s=9, grace_days=0), id="9s-no-grace")]
)
async def test_an_agent_expired_past_the_grace_period_says_it_needs_enrolling(
    hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, identity = await enroll_device()
    await until(identity.cert_not_after + 0.5)  # offline the whole life of its certificate
    write_agent_settings(paths, FAST + '[agent.inference]\nreport = "all"\n')
    ModelDirectory(paths.models).install(SHIPPED_MODELS[0])
    agent = agents(paths)
    client = await wait_socket(paths, agent)
    try:
        # An attempt whose TLS 1.3 alert is lost with the socket waits out aiomqtt's 10 s
        # for a CONNACK before the agent's clock names the expiry: 20 s was once too few.
        await eventually(
            lambda: _is(link_state(client), "expired-past-grace"),
            timeout=45,
            what="expired past the grace period",
        )
        await eventually(
            lambda: _holds(attempts_refused(agent, "expired-past-grace") >= 6),
            timeout=30,
            what="six refused attempts",
        )
        plain = [m for m in said(agent, "error") if m.startswith("broker link ")]
        assert not said_about(agent, "alert_certificate")  # paho's, once per attempt before
        assert len(plain) == 1, plain
        assert plain[0].startswith("broker link expired-past-grace: this device's certificate")
        assert "more than the grace period ago" in plain[0]  # the hub's reason
        assert f"{ENROLL} {paths.profile}` (a fresh data folder" in plain[0]
        link = (await client.status())["link"]
        assert link["action"] == "needs outpost-agent enroll with a new bootstrap token"
        await assert_serves_locally(client, 20)
    finally:
        await client.close()


async def _revoked_status(client: LocalClient) -> dict[str, Any]:
    """The agent's status while it says revoked, else nothing (falsy, for `eventually`)."""
    status = await client.status()
    return status if status["connection"] == "revoked" else {}


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _holds(value: bool) -> bool:
    return value
