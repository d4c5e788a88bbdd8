"""Hub bundles on the device, end to end (real agents, no link): at a site with several
devices, each imports the one acks folder the hub wrote for all of them; and the
tasks a bundle leases keep the deadline and lease the hub gave them, however long the
stick took."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from edge.identity import DevicePaths
from hub.app import Hub
from hub.courier import exporter
from hub.courier.desk import open_desk
from hub.store.tasks import NewTask
from outpost.courier import parts
from tests.conftest import Enroller
from tests.integration.test_courier import (
    cli,
    held_on_device,
    offline_agent,
    produce,
    proxy,  # noqa: F401 - the fixture
)
from tests.integration.test_sink_webhook import INPUT, VIB
from tests.linkproxy import LinkProxy
from tests.support import AgentProcess

DAY = 86400.0


async def test_each_device_imports_its_ack_from_the_shared_acks_folder(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """As docs/courier.md says: `bundle import --ack-out /media/stick/acks` at the hub,
    then `outpost-agent bundle import /media/stick/acks` on each device."""
    stick = tmp_path / "stick"
    sites = []
    for _ in range(3):
        paths, device_id, _, client = await offline_agent(enroll_device, agents, proxy)
        try:
            await produce(client, 1, 5)
        finally:
            await client.close()
        out = cli("agent", "bundle", "export", "--data", paths.root, "--to", stick)
        assert out.returncode == 0, out.stderr
        sites.append((paths, device_id))
    imported = cli("hub", "bundle", "import", "--data", hub.paths.root, stick,
                   "--ack-out", stick / "acks")  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr

    for paths, device_id in sites:
        result = cli("agent", "bundle", "import", "--data", paths.root, stick / "acks")
        assert result.returncode == 0, result.stdout + result.stderr
        assert held_on_device(paths) == 0  # its ack applied
        others = [d for _, d in sites if d != device_id]
        for other in others:
            assert f"skipped: is for {other}, not for this device" in result.stdout
        assert "the hub holds up to" in result.stdout

    # A folder with no ack for the device says so, and fails.
    only_others = tmp_path / "others"
    only_others.mkdir()
    first_paths, first_id = sites[0]
    for part in (stick / "acks").iterdir():
        if first_id not in part.name:
            (only_others / part.name).write_bytes(part.read_bytes())
    result = cli("agent", "bundle", "import", "--data", first_paths.root, only_others)
    assert result.returncode == 2
    assert f"no bundle here is for this device ({first_id})" in result.stderr


def inbox(paths: DevicePaths) -> dict[str, tuple[float, float]]:
    """The agent's task inbox (read beside it): deadline and lease end by task."""
    with contextlib.closing(sqlite3.connect(paths.store, timeout=30)) as db:
        rows = db.execute("SELECT task_id, deadline, lease_until FROM inbox").fetchall()
    return {str(r[0]): (float(r[1]), float(r[2])) for r in rows}


def new_task(task_id: str, device_id: str, priority: int) -> NewTask:
    return NewTask(
        task_id=task_id,
        model=VIB,
        version="",
        input=msgspec.msgpack.encode(INPUT),
        dtype="int8",
        priority=priority,
        deadline=time.time() + 30 * DAY,
        lease_s=60,
        target={"device": device_id},
        submitted_by="test",
    )


async def test_tasks_from_a_bundle_carried_for_days_keep_the_hubs_lease(
    hub: Hub,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    proxy: LinkProxy,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The hub counts a task's lease from its bundle's making: the device takes what is
    left of it, and none of a task whose lease ran out on the way (the hub has put that
    one back in its queue)."""
    paths, device_id, _, client = await offline_agent(enroll_device, agents, proxy, models=True)
    await client.close()
    # One bundle in first: the hub learns the device's key and what it serves.
    assert cli("agent", "bundle", "export", "--data", paths.root, "--to",
               tmp_path / "first").returncode == 0  # fmt: skip
    assert cli("hub", "bundle", "import", "--data", hub.paths.root,
               tmp_path / "first").returncode == 0  # fmt: skip

    store = hub.parts.store
    now = time.time()
    await store.create_tasks(
        [new_task("due", device_id, priority=1), new_task("lapsed", device_id, priority=0)],
        now=now - 9 * DAY,
    )
    desk = open_desk(hub.paths, store, hub.config)
    back = tmp_path / "back"
    # Made six days ago (the stick took that long), leasing "due" for 7 days; and made
    # eight days ago, leasing "lapsed" for 7 days: its lease ran out a day ago.
    for name, age in (("a", 6 * DAY), ("b", 8 * DAY)):
        made = await desk.exporter.bundle_for(device_id, now=now - age, max_tasks=1)
        assert made.tasks == 1
        parts.write_parts(made.sealed, back, f"outpost-hub-for-site-{name}", 1 << 30)
    lease_ends = now - 6 * DAY + exporter.DEFAULT_LEASE_S  # at the hub

    imported = cli("agent", "bundle", "import", "--data", paths.root, back)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "1 tasks leased for 1 days" in imported.stdout
    assert "1 tasks not taken: their lease or deadline ran out" in imported.stdout

    held = inbox(paths)
    assert "lapsed" not in held
    deadline, lease_until = held["due"]
    slack = 120.0  # the seconds between the hub's reckoning and the agent's
    assert abs(lease_until - lease_ends) < slack, lease_until - lease_ends
    assert abs(deadline - (now + 30 * DAY)) < slack, deadline - (now + 30 * DAY)
