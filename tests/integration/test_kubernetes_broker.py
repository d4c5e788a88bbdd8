"""deploy/kubernetes and the broker: the configuration README.md's step 4 writes names
every replica the StatefulSet can run (checked as text for Mosquitto and EMQX), and on a
real Mosquitto each of them takes its share of the devices' messages.

A replica id is its pod's name; a replica whose link (`outpost-hub-link-<id>`) the ACL
does not name is still counted in the shared subscription's group, and Mosquitto drops
what it picks for it (the control below). A Deployment's random pod names could never be
listed; the StatefulSet's, outpost-hub-0 up to the HPA's maxReplicas - 1, are.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.broker.managed import find_program
from hub.cli import _parser, main
from hub.initialise import initialise
from hub.paths import HubPaths, link_cn
from outpost import wire
from tests.integration.test_broker_config import (
    DELIVERY_TIMEOUT_S,
    Broker,
    _client,
    _has,
    _heartbeat,
    _publish,
    _receiving,
    _shared,
    _subscribe,
    _until_listening,
)
from tests.integration.test_kubernetes_manifests import DEPLOY, _flag, _hub_container, _pod_names
from tests.support import eventually, free_port

# --- the broker knows every replica --------------------------------------------------------


def readme_broker_config(data: Path, out: Path, kind: str) -> list[str]:
    """The `outpost-hub broker-config` command of README.md's step 4, as `main` takes it,
    on `data` and `out`, for a broker of `kind`."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "broker-config" in b]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:2] == ["outpost-hub", "broker-config"], words
    args = words[1:]
    for flag, value in (("--data", data), ("--out", out), ("--kind", kind)):
        args[args.index(flag) + 1] = str(value)
    return args


def test_the_broker_config_in_the_readme_lets_in_every_pod_the_hpa_may_make() -> None:
    """A replica id is its pod's name, and the broker grants the hub's rights by name
    (`outpost-hub-link-<id>`): each name the StatefulSet can give under either HPA must
    be a --replica of the README's command, or that replica gets no device message."""
    parsed = _parser().parse_args(readme_broker_config(Path("data"), Path("out"), "mosquitto"))
    assert parsed.func.target == "hub.cli.broker:broker_config"
    assert set(_pod_names()) <= set(parsed.replica), "pods the broker's ACL would not name"
    # And those names are what the pods run with.
    container = _hub_container()
    env = {e["name"]: e for e in container["env"]}
    assert _flag(container["args"], "--replica-id") == "$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("kind", ["mosquitto", "emqx"])
def test_the_written_acl_names_each_pods_link(tmp_path: Path, kind: str) -> None:
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    out = tmp_path / "broker"
    assert main(readme_broker_config(paths.root, out, kind)) == 0
    acl = (out / ("acl" if kind == "mosquitto" else "acl.conf")).read_text(encoding="utf-8")
    for pod in _pod_names():
        rule = f"user {link_cn(pod)}\n" if kind == "mosquitto" else f'"{link_cn(pod)}"'
        assert rule in acl, pod


# --- on a real Mosquitto -------------------------------------------------------------------


@pytest.fixture
async def broker(hub_paths: HubPaths, tmp_path: Path) -> AsyncIterator[Broker]:
    """Mosquitto with the files of the README's command, `--kind mosquitto`, on loopback."""
    out, port = tmp_path / "broker", free_port()
    args = readme_broker_config(hub_paths.root, out, "mosquitto")
    args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
    assert main(args) == 0
    process = subprocess.Popen(
        [find_program("mosquitto"), "-c", str(out / "mosquitto.conf")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _until_listening(port, process, out / "mosquitto.log")
        yield Broker(out, port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("replica", "gets_messages"),
    [
        (_pod_names()[-1], True),  # the last pod the HPA may add
        (_pod_names()[0], True),
        ("outpost-hub-7d9f8c6b5-x2k4q", False),  # the control: a Deployment's pod name
    ],
)
async def test_a_pod_of_the_statefulset_gets_device_messages(
    broker: Broker, hub_paths: HubPaths, replica: str, gets_messages: bool
) -> None:
    cn = link_cn(replica)
    own_down = wire.down_topic(cn, "marker")  # any client may read its own down/#
    async with (
        _client(broker, hub_paths, cn) as link,
        _client(broker, hub_paths, link_cn(_pod_names()[1])) as other,
        _client(broker, hub_paths, "dev-a") as device,
        _receiving(link) as inbox,
    ):
        await _subscribe(link, _shared(hub_paths))  # alone in the group
        await _subscribe(link, wire.down_topic(cn, "#"))
        await _publish(device, _heartbeat("dev-a"), b"beat")
        # Queued after the heartbeat: when it arrives, the heartbeat would have.
        await _publish(other, own_down, b"done")

        await eventually(
            lambda: _has(inbox, own_down), timeout=DELIVERY_TIMEOUT_S, what="the marker"
        )

    expected = [(_heartbeat("dev-a"), b"beat")] if gets_messages else []
    assert inbox.messages == [*expected, (own_down, b"done")]
