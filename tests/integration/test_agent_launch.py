"""The launcher's rollback (systemd/outpost-launch), with the test's loop standing in
for systemd's Restart=on-failure: a new version that exits, or hangs, before it is
ready fails its starts; after --attempts of them `current` goes back to `previous`, the
reason is written for the agent to report, and the previous version comes up. A version
that comes up is never rolled back. And the real agent writes the ready marker the
launcher waits for, and reports a rollback it finds."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edge.store.recovery import open_store
from outpost import __version__
from tests.conftest import Enroller
from tests.local_api import LocalClient
from tests.support import REPO, AgentProcess, eventually

LAUNCH = REPO / "systemd" / "outpost-launch"
GOOD = "1.0.0"


def release(prefix: Path, version: str, body: str) -> None:
    """A stand-in release whose `outpost-agent` runs `body` (a shell script)."""
    bin_dir = prefix / "releases" / version / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    agent = bin_dir / "outpost-agent"
    agent.write_text(f"#!/bin/sh\n# $1 = run, $2 = --data, $3 = DATA\n{body}\n")
    agent.chmod(0o755)


def folders(tmp_path: Path, new_body: str) -> tuple[Path, Path]:
    prefix, data = tmp_path / "opt", tmp_path / "data"
    data.mkdir()
    release(prefix, GOOD, f'printf {GOOD} > "$3/ready"; exit 0')
    release(prefix, "2.0.0", new_body)
    (prefix / "current").symlink_to("releases/2.0.0")
    (prefix / "previous").symlink_to(f"releases/{GOOD}")
    return prefix, data


def launch(prefix: Path, data: Path, deadline: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCH), "--prefix", str(prefix), "--data", str(data),
         "--deadline", str(deadline), "--attempts", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def supervise(prefix: Path, data: Path, deadline: float = 30) -> list[int]:
    """systemd's part: start again after a failure, up to 6 times; the exit statuses."""
    codes = []
    for _ in range(6):
        done = launch(prefix, data, deadline)
        codes.append(done.returncode)
        if done.returncode == 0:
            break
    return codes


def test_a_version_that_crashes_at_start_is_rolled_back(tmp_path: Path) -> None:
    prefix, data = folders(tmp_path, "exit 3")

    codes = supervise(prefix, data)

    assert codes == [1, 1, 1, 0]  # three failed starts, then the previous version
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    assert os.readlink(prefix / "previous") == "releases/2.0.0"
    report = json.loads((data / "rolled-back.json").read_text())
    assert (report["from"], report["to"], report["failures"]) == ("2.0.0", GOOD, 3)
    assert report["reason"] == "exited with status 3 before it was ready"
    assert (data / "ready").read_text() == GOOD


def test_a_version_that_hangs_before_ready_is_rolled_back(tmp_path: Path) -> None:
    prefix, data = folders(tmp_path, "exec sleep 600")

    codes = supervise(prefix, data, deadline=1)

    assert codes == [1, 1, 1, 0]
    report = json.loads((data / "rolled-back.json").read_text())
    assert report["reason"] == "not ready within 1 s"
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"


def test_a_version_whose_agent_cannot_even_be_started_is_rolled_back(tmp_path: Path) -> None:
    """A power cut right after the switch left the new agent's file empty: starting it
    fails (exec format error) before any process runs, and counts as a failed start."""
    prefix, data = folders(tmp_path, "exit 0")
    (prefix / "releases" / "2.0.0" / "venv" / "bin" / "outpost-agent").write_bytes(b"")

    codes = supervise(prefix, data)

    assert codes == [1, 1, 1, 0]
    report = json.loads((data / "rolled-back.json").read_text())
    assert report["reason"].startswith("could not be started: ")
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    assert (data / "ready").read_text() == GOOD


def test_no_rollback_to_a_previous_version_that_holds_no_agent(tmp_path: Path) -> None:
    prefix, data = folders(tmp_path, "exit 3")
    (prefix / "releases" / GOOD / "venv" / "bin" / "outpost-agent").unlink()

    codes = supervise(prefix, data)

    assert codes == [1] * 6  # systemd's start limit ends it; nothing better to run
    assert os.readlink(prefix / "current") == "releases/2.0.0"
    assert not (data / "rolled-back.json").exists()


def test_no_rollback_back_to_the_version_it_was_rolled_back_from(tmp_path: Path) -> None:
    """After going back from 2.0.0, starts of 1.0.0 that fail too (a slow boot, say) must
    not swing to 2.0.0 again: it is known not to come up."""
    prefix, data = folders(tmp_path, "exit 3")
    assert supervise(prefix, data) == [1, 1, 1, 0]  # back to 1.0.0
    good = prefix / "releases" / GOOD / "venv" / "bin" / "outpost-agent"
    good.write_text("#!/bin/sh\nexit 4\n")  # now it fails to start as well

    codes = supervise(prefix, data)

    assert codes == [1] * 6
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    state = json.loads((data / "launch-state.json").read_text())
    assert state["rolled_back_from"] == ["2.0.0"]


def test_a_version_that_comes_up_stays(tmp_path: Path) -> None:
    prefix, data = folders(tmp_path, 'printf 2.0.0 > "$3/ready"; exit 0')

    assert supervise(prefix, data) == [0]
    assert os.readlink(prefix / "current") == "releases/2.0.0"
    assert not (data / "rolled-back.json").exists()
    # A good start leaves no failure counted against the version.
    state = json.loads((data / "launch-state.json").read_text())
    assert state == {"failures": 0, "rolled_back_from": [], "version": "2.0.0"}


def test_the_agent_gets_two_malloc_arenas_unless_told_otherwise(tmp_path: Path) -> None:
    body = f'printf "%s" "$MALLOC_ARENA_MAX" > "$3/arenas"; printf {GOOD} > "$3/ready"; exit 0'
    prefix, data = folders(tmp_path, body.replace(GOOD, "2.0.0"))
    outside = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    for given, expected in ((None, "2"), ("4", "4")):
        env = outside if given is None else {**outside, "MALLOC_ARENA_MAX": given}
        done = subprocess.run(
            [sys.executable, str(LAUNCH), "--prefix", str(prefix), "--data", str(data)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (data / "arenas").read_text() == expected


def test_an_agent_that_switched_to_a_new_release_is_restarted_into_it_at_once(
    tmp_path: Path,
) -> None:
    """Exit status 75: the agent moved `current` to a release it installed; the same
    launcher run starts that one (no failure counted, no wait for systemd)."""
    prefix, data = folders(tmp_path, 'printf 2.0.0 > "$3/ready"; exit 0')
    (prefix / "current").unlink()
    (prefix / "current").symlink_to(f"releases/{GOOD}")
    switch = f'ln -sfn releases/2.0.0 "{prefix}/current"'
    release(prefix, "1.5.0", f'printf 1.5.0 > "$3/ready"; {switch}; exit 75')
    (prefix / "current").unlink()
    (prefix / "current").symlink_to("releases/1.5.0")

    done = launch(prefix, data)

    assert done.returncode == 0, done.stderr  # one launcher run: 1.5.0, then 2.0.0
    assert "restarting into the new current" in done.stderr
    assert (data / "ready").read_text() == "2.0.0"
    assert not (data / "rolled-back.json").exists()
    assert json.loads((data / "launch-state.json").read_text()) == {
        "failures": 0,
        "rolled_back_from": [],
        "version": "2.0.0",
    }


async def test_the_agent_marks_itself_ready_and_reports_a_rollback(
    enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    paths, _ = await enroll_device()
    rolled = {"from": "9.9.9", "to": __version__, "reason": "exited with status 3 before it "
              "was ready", "failures": 3, "at": 1.0}  # fmt: skip
    (paths.root / "rolled-back.json").write_text(json.dumps(rolled))
    agent = agents(paths)

    async def ready() -> bool:
        assert agent.process.poll() is None, agent.output()
        marker = paths.root / "ready"
        return marker.exists() and marker.read_text() == __version__

    await eventually(ready, timeout=30, what="the ready marker")
    assert not (paths.root / "rolled-back.json").exists()
    assert (paths.root / "rolled-back.reported.json").exists()
    assert "agent 9.9.9 did not come up" in agent.output()


async def test_an_agent_that_cannot_write_its_ready_marker_serves_and_writes_it_later(
    enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """A full or failing disk as the agent starts (here: a folder where the marker goes)
    is said in the log and tried again; the agent serves meanwhile, as it must."""
    paths, _ = await enroll_device()
    blocker = paths.root / "ready"
    blocker.mkdir()
    agent = agents(paths)

    async def said() -> bool:
        assert agent.process.poll() is None, agent.output()
        return "cannot tell the launcher this agent is ready" in agent.output()

    await eventually(said, timeout=30, what="the failed marker in the log")
    client = LocalClient(paths.socket)
    try:
        assert (await client.status())["uptime_s"] > 0  # serving all the while
    finally:
        await client.close()
    blocker.rmdir()

    async def ready() -> bool:
        assert agent.process.poll() is None, agent.output()
        return blocker.is_file() and blocker.read_text() == __version__

    await eventually(ready, timeout=30, what="the ready marker, once it can be written")


async def test_a_rolled_back_agent_runs_on_a_store_the_newer_one_migrated(
    enroll_device: Enroller, agents: Callable[..., AgentProcess]
) -> None:
    """The choice for store migrations: additive only (tables, columns with defaults,
    meta rows), so the version rolled back to runs on the store the newer version
    migrated; the records it holds are kept and still go to the hub."""
    paths, _ = await enroll_device()
    opened = open_store(paths.store)
    opened.db.conn.close()
    with contextlib.closing(sqlite3.connect(paths.store)) as db, db:
        # What a newer agent's migration might have added.
        db.execute("CREATE TABLE future_things (id INTEGER PRIMARY KEY, what TEXT)")
        db.execute("ALTER TABLE records ADD COLUMN future_flag INTEGER NOT NULL DEFAULT 0")
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('099_future', 0)")
    agent = agents(paths)

    async def ready() -> bool:
        assert agent.process.poll() is None, agent.output()
        marker = paths.root / "ready"
        return marker.exists() and marker.read_text() == __version__

    await eventually(ready, timeout=30, what="the older agent ready on the newer store")
    client = LocalClient(paths.socket)
    try:
        status, answer = await client.append("results", [{"n": 1}])
    finally:
        await client.close()
    assert status == 201, answer
