"""The hub's side of courier bundles, end to end with no link: what an import does
without an ack to write, and what it leaves alone when the bundle is older than what
the hub heard from the device since."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_courier import (
    cli,
    offline_agent,
    proxy,  # noqa: F401 - the fixture
)
from tests.integration.test_sink_webhook import INPUT, VIB
from tests.linkproxy import LinkProxy
from tests.support import AgentProcess


async def states_of(hub: Hub, task_ids: list[str]) -> list[tuple[str, str | None]]:
    found = [await hub.parts.store.task(i) for i in task_ids]
    return [(t.state, t.device_id) for t in found if t is not None]


async def test_an_import_without_an_ack_leases_nothing(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """`bundle import` with no --ack-out makes no ack: the device's queued tasks stay
    queued (no lease for a bundle nobody carries); `bundle export --tasks N` leases at
    most N of them later, and the rest stay queued."""
    paths, device_id, agent, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "1").returncode == 0  # fmt: skip
    assert cli("hub", "bundle", "import", "--data", hub.paths.root,
               tmp_path / "1").returncode == 0  # fmt: skip
    operator = await api.token("operator")
    task = {"model": VIB, "input": INPUT, "dtype": "int8", "target": {"device": device_id}}
    submitted = await api.call("POST", "/api/v1/tasks", token=operator, body={"tasks": [task] * 3})
    assert submitted.status == 202, submitted.body
    ids = submitted.body["ids"]

    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "2").returncode == 0  # fmt: skip
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, tmp_path / "2")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "leased" not in imported.stdout
    assert await states_of(hub, ids) == [("queued", None)] * 3

    capped = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
                 "--to", tmp_path / "to-site", "--tasks", "2")  # fmt: skip
    assert capped.returncode == 0, capped.stdout + capped.stderr
    assert "(2 tasks leased)" in capped.stdout
    assert sorted(await states_of(hub, ids)) == [
        ("accepted", device_id),
        ("accepted", device_id),
        ("queued", None),
    ]
    none = cli("hub", "bundle", "export", "--data", hub.paths.root, "--device", device_id,
               "--to", tmp_path / "none", "--tasks", "0")  # fmt: skip
    assert none.returncode == 0, none.stdout + none.stderr
    assert "tasks leased" not in none.stdout
    assert sorted(await states_of(hub, ids))[-1] == ("queued", None)
    applied = cli("agent", "bundle", "import", "--data", paths.root, tmp_path / "to-site")
    assert applied.returncode == 0, applied.stderr
    assert "2 tasks leased for 7 days" in applied.stdout
    assert agent.process.poll() is None
