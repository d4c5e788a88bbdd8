"""The launcher's rollback (systemd/outpost-launch), with the test's loop standing in
for systemd's Restart=on-failure: a new version that exits, or hangs, before it is
ready, or dies within its trial once ready, fails its starts; after --attempts of them
`current` goes back to `previous`, the reason is written for the agent to report, and the
previous version comes up. A version that comes up and stays is never rolled back, nor
is a version rolled back to itself; a power cut midway through a rollback loses nothing,
and a launcher that cannot write its state lets a running agent be. And the real agent
writes the ready marker the launcher waits for, and reports a rollback it finds."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

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
    bin_dir.mkdir(parents=True, exist_ok=True)
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


def arguments(prefix: Path, data: Path, deadline: float = 30) -> list[str]:
    return ["--prefix", str(prefix), "--data", str(data), "--deadline", str(deadline),
            "--attempts", "3"]  # fmt: skip


def launch(prefix: Path, data: Path, deadline: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCH), *arguments(prefix, data, deadline)],
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


# A stand-in that stays until the launcher took it for ready: its state file, replaced
# (a new inode) once it saw the marker, then exits 3, as a version whose first connect
# raises would.
DIES_ONCE_READY = (
    'before=$(ls -i "$3/launch-state.json" 2>/dev/null); printf 2.0.0 > "$3/ready"\n'
    'while [ "$(ls -i "$3/launch-state.json" 2>/dev/null)" = "$before" ]; do sleep 0.05; done\n'
    "exit 3"
)


def test_a_version_that_dies_soon_after_it_is_ready_is_rolled_back(tmp_path: Path) -> None:
    """Ready (store and local API up) is not yet up for good: a version that dies within
    its trial (by default minutes) counts a failure as one that never came up does."""
    prefix, data = folders(tmp_path, DIES_ONCE_READY)

    codes = supervise(prefix, data)

    assert codes == [1, 1, 1, 0]
    report = json.loads((data / "rolled-back.json").read_text())
    assert (report["from"], report["to"], report["failures"]) == ("2.0.0", GOOD, 3)
    assert report["reason"] == "exited with status 3 within 120 s of being ready"
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    assert (data / "ready").read_text() == GOOD


def test_failures_are_forgotten_once_a_version_ran_its_trial(tmp_path: Path) -> None:
    prefix, data = folders(tmp_path, 'printf 2.0.0 > "$3/ready"; exec sleep 600')
    state = {"failures": 2, "rolled_back_from": [], "version": "2.0.0"}
    (data / "launch-state.json").write_text(json.dumps(state))
    log = tmp_path / "launch.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, str(LAUNCH), *arguments(prefix, data), "--trial", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while json.loads((data / "launch-state.json").read_text())["failures"] != 0:
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "failures still counted after 60 s"
            time.sleep(0.05)  # a poll with a deadline
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(30)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
    assert os.readlink(prefix / "current") == "releases/2.0.0"
    assert not (data / "rolled-back.json").exists()


def test_a_launcher_that_cannot_write_its_state_lets_a_ready_agent_run(tmp_path: Path) -> None:
    """A full disk (here: a folder where the staging file goes) once the agent is ready:
    said, and the launcher waits for the agent as ever, rather than dying and leaving it
    to be killed with the unit."""
    prefix, data = folders(tmp_path, 'printf 2.0.0 > "$3/ready"; exit 0')
    (data / "launch-state.json.new").mkdir()

    done = launch(prefix, data)

    assert done.returncode == 0, done.stderr  # the agent's own status
    assert "Traceback" not in done.stderr
    assert "outpost-launch: cannot write" in done.stderr


def test_no_rollback_of_a_version_to_itself(tmp_path: Path) -> None:
    """Killed inside selfupdate.switch, between its two links: `previous` and `current`
    both name the running version. Its failed starts are counted, and nothing is rolled
    back (nor reported as rolled back: it would be the agent's own version)."""
    prefix, data = tmp_path / "opt", tmp_path / "data"
    data.mkdir()
    release(prefix, GOOD, "exit 3")
    (prefix / "current").symlink_to(f"releases/{GOOD}")
    (prefix / "previous").symlink_to(f"releases/{GOOD}")

    codes = supervise(prefix, data)

    assert codes == [1] * 6
    assert not (data / "rolled-back.json").exists()
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    assert "not rolling back" in launch(prefix, data).stderr


def load_launcher() -> ModuleType:
    """The launcher as a module of this process, to cut a rollback short inside it."""
    loader = importlib.machinery.SourceFileLoader("outpost_launch", str(LAUNCH))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_power_cut_during_a_rollback_keeps_the_version_rolled_back_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut right after the swap: what the launcher knows (the version not to come back
    to) is on the disk already. When the previous version then fails its starts too (a
    slow boot, say), `current` does not swing back to the one that did not come up."""
    prefix, data = folders(tmp_path, "exit 3")
    launcher = load_launcher()
    real_swap = launcher._swap

    class PowerCut(Exception):
        pass

    def swap(current: Path, previous: Path) -> None:
        real_swap(current, previous)
        raise PowerCut

    monkeypatch.setattr(launcher, "_swap", swap)
    # This process's own signal handlers stay as they are.
    stays = SimpleNamespace(signal=lambda *args: None, SIGTERM=signal.SIGTERM, SIGINT=signal.SIGINT)
    monkeypatch.setattr(launcher, "signal", stays)
    args = arguments(prefix, data)
    assert launcher.main(args) == 1
    assert launcher.main(args) == 1
    with pytest.raises(PowerCut):
        launcher.main(args)  # the third failure: rolled back, and the power is cut
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    good = prefix / "releases" / GOOD / "venv" / "bin" / "outpost-agent"
    good.write_text("#!/bin/sh\nexit 4\n")  # 1.0.0 now fails to start as well

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


def test_a_version_that_exits_just_after_it_is_ready_is_no_failed_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher reads the marker, the agent writes it and exits, then the launcher
    sees the exit: the version was ready (a loaded machine once made this a failed start,
    so a version that came up and left cleanly could be rolled back)."""
    prefix, data = folders(tmp_path, 'printf 2.0.0 > "$3/ready"; exit 0')
    launcher = load_launcher()
    started: list[subprocess.Popen[bytes]] = []
    real_popen, real_read = launcher.subprocess.Popen, launcher._read_text

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def read_before_the_write(path: Path) -> str:
        if path.name == "ready" and started and started[0].returncode is None:
            started[0].wait()  # the marker is written and the agent gone ...
            return ""  # ... after this read
        return str(real_read(path))

    monkeypatch.setattr(launcher.subprocess, "Popen", popen)
    monkeypatch.setattr(launcher, "_read_text", read_before_the_write)
    stays = SimpleNamespace(signal=lambda *args: None, SIGTERM=signal.SIGTERM, SIGINT=signal.SIGINT)
    monkeypatch.setattr(launcher, "signal", stays)

    assert launcher.main(arguments(prefix, data)) == 0
    assert [p.returncode for p in started] == [0]  # one start, the agent gone cleanly
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
        "must_reach": True,  # it exited before the hub welcomed it: still to prove
        "rolled_back_from": [],
        "version": "2.0.0",
    }


def updating_to(tmp_path: Path, new_body: str) -> tuple[Path, Path]:
    """1.0.0 runs, updates to 2.0.0 as the agent's updater does (previous and current
    moved, exit 75), and on a later start (after a roll-back) comes up and stays."""
    prefix, data = folders(tmp_path, new_body)
    (prefix / "current").unlink()
    (prefix / "current").symlink_to(f"releases/{GOOD}")
    switch = (
        f'ln -sfn releases/{GOOD} "{prefix}/previous"; ln -sfn releases/2.0.0 "{prefix}/current"'
    )
    release(
        prefix,
        GOOD,
        f'printf {GOOD} > "$3/ready"\n'
        f'if [ ! -e "$3/updated" ]; then touch "$3/updated"; {switch}; exit 75; fi\n'
        f'printf {GOOD} > "$3/reached"; exit 0',
    )
    return prefix, data


def reach_arguments(prefix: Path, data: Path) -> list[str]:
    return [*arguments(prefix, data), "--trial", "1", "--reach", "2"]


def test_an_updated_version_that_never_reaches_the_hub_is_rolled_back(tmp_path: Path) -> None:
    """It comes up, passes its trial, and serves; but its link never works (an MQTT
    session that fails and retries rather than raises). The hub sent the update over
    that link minutes before, so the version is to blame: stopped, and rolled back."""
    prefix, data = updating_to(tmp_path, 'printf 2.0.0 > "$3/ready"; exec sleep 600')

    done = subprocess.run(
        [sys.executable, str(LAUNCH), *reach_arguments(prefix, data)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr  # systemd restarts it: into 1.0.0
    assert "agent 2.0.0 did not reach the hub within 2 s of being ready" in done.stderr
    assert os.readlink(prefix / "current") == f"releases/{GOOD}"
    report = json.loads((data / "rolled-back.json").read_text())
    assert (report["from"], report["to"]) == ("2.0.0", GOOD)
    assert report["reason"] == "did not reach the hub within 2 s of being ready"
    assert supervise(prefix, data) == [0]  # 1.0.0 comes up, reaches the hub, stays
    state = json.loads((data / "launch-state.json").read_text())
    assert state["rolled_back_from"] == ["2.0.0"]


def test_an_updated_version_that_dies_before_reaching_the_hub_is_rolled_back(
    tmp_path: Path,
) -> None:
    """Past its trial and before --reach, every run: each run's wait for the hub starts
    afresh, so its exits count, until it has reached the hub."""
    prefix, data = updating_to(tmp_path, 'printf 2.0.0 > "$3/ready"; sleep 2; exit 1')
    assert launch_with(prefix, data, "--trial", "1").returncode == 1  # 1.0.0, then 2.0.0

    codes = [launch_with(prefix, data, "--trial", "1").returncode for _ in range(3)]

    assert codes[-1] == 0, codes  # 1.0.0 again, which reaches the hub and stays
    report = json.loads((data / "rolled-back.json").read_text())
    assert (report["from"], report["to"], report["failures"]) == ("2.0.0", GOOD, 3)
    assert report["reason"] in (
        "exited with status 1 before it reached the hub",
        "exited with status 1 within 1 s of being ready",  # a machine slow to see it
    )


def launch_with(prefix: Path, data: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCH), *arguments(prefix, data), *more],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def run_until(
    prefix: Path, data: Path, tmp_path: Path, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Run the launcher until its state file satisfies `done`; that state."""
    log = tmp_path / "launch.log"
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, str(LAUNCH), *reach_arguments(prefix, data)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            path = data / "launch-state.json"
            state = json.loads(path.read_text()) if path.exists() else {}
            if state.get("version") == "2.0.0" and done(state):
                break
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"state still {state} after 60 s"
            time.sleep(0.05)  # a poll with a deadline
        assert launcher.poll() is None, log.read_text()  # the version serves on
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(30)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
    return state


def test_an_updated_version_that_reaches_the_hub_stays(tmp_path: Path) -> None:
    body = 'printf 2.0.0 > "$3/ready"; printf 2.0.0 > "$3/reached"; exec sleep 600'
    prefix, data = updating_to(tmp_path, body)

    state = run_until(prefix, data, tmp_path, lambda s: "must_reach" not in s)

    assert state["failures"] == 0
    assert os.readlink(prefix / "current") == "releases/2.0.0"
    assert not (data / "rolled-back.json").exists()


def test_an_updated_version_with_nothing_to_go_back_to_serves_on(tmp_path: Path) -> None:
    prefix, data = updating_to(tmp_path, 'printf 2.0.0 > "$3/ready"; exec sleep 600')
    (prefix / "releases" / GOOD / "venv" / "bin" / "outpost-agent").unlink()

    # 1.0.0 is gone: started straight into 2.0.0, as after the update and a reboot.
    (prefix / "current").unlink()
    (prefix / "current").symlink_to("releases/2.0.0")
    (data / "launch-state.json").write_text(
        json.dumps({"version": "2.0.0", "failures": 0, "must_reach": True})
    )
    state = run_until(prefix, data, tmp_path, lambda s: "must_reach" not in s)

    assert os.readlink(prefix / "current") == "releases/2.0.0"
    assert not (data / "rolled-back.json").exists()
    assert state["failures"] == 0


def test_a_version_started_by_hand_need_not_reach_the_hub(tmp_path: Path) -> None:
    prefix, data = folders(tmp_path, 'printf 2.0.0 > "$3/ready"; exec sleep 600')

    state = run_until(prefix, data, tmp_path, lambda s: s.get("failures") == 0)

    assert "must_reach" not in state


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

    async def reached() -> bool:  # once the hub answered its hello
        assert agent.process.poll() is None, agent.output()
        marker = paths.root / "reached"
        return marker.exists() and marker.read_text() == __version__

    await eventually(reached, timeout=60, what="the reached marker")
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
