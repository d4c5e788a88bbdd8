"""Sinks configured wrongly: a mistake in hub.toml is refused at start naming the key; a
sink that cannot deliver (nothing listens, plain HTTP to another machine, a secret file
missing) shows its state and reason in the API while the hub and its other sinks go on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub.app import Hub
from hub.initialise import initialise
from hub.paths import HubPaths
from tests.api_client import ApiClient
from tests.support import REPO, add_device, eventually, free_port


@pytest.fixture
def hub_settings(tmp_path: Path) -> str:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret")
    closed = free_port()  # nothing listens there
    return (
        "[[hub.sinks]]\n"
        'name = "nobody-home"\nkind = "webhook"\n'
        f'url = "http://127.0.0.1:{closed}/events"\ncredentials_file = "{secret}"\n'
        "timeout_s = 2\n"
        "[[hub.sinks]]\n"
        'name = "plain-http"\nkind = "webhook"\n'
        f'url = "http://collector.example/events"\ncredentials_file = "{secret}"\n'
        "[[hub.sinks]]\n"
        'name = "no-secret"\nkind = "webhook"\n'
        f'url = "https://collector.example/events"\ncredentials_file = "{tmp_path / "nope"}"\n'
    )


async def test_sinks_that_cannot_deliver_say_why_and_the_hub_goes_on(
    hub: Hub, api: ApiClient
) -> None:
    viewer = await api.token("viewer")
    await add_device(hub, "dev-cfg000000001")  # an event for every sink

    async def states() -> dict[str, tuple[str, str]]:
        reply = await api.call("GET", "/api/v1/sinks", token=viewer)
        found = {s["name"]: (s["state"], s["error"]) for s in reply.body["items"]}
        settled = all(state in ("failing", "failed") for state, _ in found.values())
        return found if settled and len(found) == 3 else {}

    found = await eventually(states, timeout=30, what="every sink's state")
    assert found["nobody-home"][0] == "failing"
    assert "POST http://127.0.0.1:" in found["nobody-home"][1]
    assert found["plain-http"] == (
        "failed",
        "sink plain-http: url must be https:// (http:// only to a loopback address), got "
        "'http://collector.example/events'",
    )
    assert found["no-secret"][0] == "failed"
    assert "sink no-secret: cannot read" in found["no-secret"][1]
    health = await api.call("GET", "/api/v1/health", token=viewer)
    assert health.status == 200  # the hub itself is fine


@pytest.mark.parametrize(
    ("sink", "said"),
    [
        ('name = "k"\nkind = "kafka"\nurl = "kafka://x"\n', "hub.sinks[0].kind: must be one of"),
        ('name = "Bad Name"\nkind = "nats"\nurl = "nats://x"\n', "hub.sinks[0].name"),
        ('name = "n"\nkind = "nats"\n', "hub.sinks[0].url: required key is missing"),
        (
            'name = "typo"\nkind = "webhook"\nurl = "https://hooks.example.com:8443x/in"\n',
            "hub.sinks[0].url: sink typo: url 'https://hooks.example.com:8443x/in' does not "
            "parse (Port could not be cast to integer value as '8443x')",
        ),
        (
            'name = "far"\nkind = "rabbitmq"\nurl = "amqp://rabbit:99999/"\n',
            "hub.sinks[0].url: sink far: url 'amqp://rabbit:99999/' does not parse (Port out",
        ),
        (
            'name = "v6"\nkind = "nats"\nurl = "nats://[::1"\n',
            "hub.sinks[0].url: sink v6: url 'nats://[::1' does not parse (Invalid IPv6 URL)",
        ),
    ],
)
def test_a_mistaken_sink_is_refused_at_start_naming_the_key(
    tmp_path: Path, sink: str, said: str
) -> None:
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    paths.config.write_text(
        f"[hub]\nmqtt_port = {free_port()}\nweb_port = {free_port()}\n[[hub.sinks]]\n{sink}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "run", "--data", str(paths.root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr
