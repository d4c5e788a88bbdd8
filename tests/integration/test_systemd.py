"""The shipped systemd files: units that `systemd-analyze verify` accepts as installed,
exposure scores of 2.0 or lower, sysusers and tmpfiles that make the user and folders,
budgets that match the smallest board; and the agent speaking the notify protocol as the
unit runs it (READY=1 once its local API answers, WATCHDOG=1 within the interval,
STOPPING=1 and a prompt exit on SIGTERM with nothing it confirmed lost), also from
behind the launcher the agent's unit starts (systemd/outpost-launch: root's, outside
what the agent may write, Python 3.8 and the standard library only), which hands it the
watchdog and counts no failure when it is stopped while the agent starts. An agent that
exits 75 to be restarted into a new release says no STOPPING=1 (systemd would take the
running service for stopping, ignore the new READY=1 and kill it), and while the new
version starts the launcher pings the watchdog for it."""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from edge import cli
from edge.agent import Agent
from edge.agentupdate import EXIT_RESTART, RestartRequested
from edge.inference.directory import ModelDirectory
from edge.profile import load_profile
from edge.store import AgentStore
from hub.app import Hub
from hub.broker.managed import pid_file
from hub.cli import load_config
from hub.paths import HubPaths
from outpost import __version__, heap
from outpost.sdnotify import Notifier, address
from tests import sandbox
from tests.conftest import Enroller
from tests.integration.test_local_inference import sample_of
from tests.integration.test_store_forward import produce, wait_socket
from tests.support import PROFILES, REPO, SHIPPED_MODELS, AgentProcess, eventually

SYSTEMD = REPO / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
LAUNCH = SYSTEMD / "outpost-launch"
AGENT_PREFIX = "/opt/outpost"  # PREFIX/releases/<version>/venv, PREFIX/current
# Where the host keeps systemd's own units (Debian: /usr/lib; older layouts: /lib).
HOST_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
MAX_EXPOSURE = 2.0


@pytest.fixture
def analyze_tools() -> None:
    """Fail, not skip, when the tools are missing: `scripts/setup.sh --test-tools`
    (what `./scripts/test` runs) installs them."""
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: run setup.sh --test-tools"
    assert HOST_UNITS is not None, "systemd's units missing: run setup.sh --test-tools"


needs_analyze = pytest.mark.usefixtures("analyze_tools")


def settings(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, in order, keys repeated as systemd allows."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def install_root(root: Path, *, with_programs: bool = True) -> None:
    """A throwaway root as a device looks after installation: systemd's own units (the
    targets ours name), ours in /etc/systemd/system, and at the path each ExecStart
    names, the program of that name from systemd/ (the launcher) or else the entry point
    of the same name from the venv running these tests."""
    assert HOST_UNITS is not None
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        if not with_programs:
            continue
        for command in settings(unit)["ExecStart"]:
            program = Path(command.split()[0].lstrip("-@:+!"))
            target = root / program.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shipped = SYSTEMD / program.name
            source = shipped if shipped.is_file() else Path(sys.executable).parent / program.name
            shutil.copy2(source, target)


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_run_the_installed_programs_on_the_state_directories() -> None:
    agent_data, hub_data = "/var/lib/outpost-agent", "/var/lib/outpost-hub"
    # The agent through the launcher, which starts PREFIX/current's agent (a child: its
    # notify messages need NotifyAccess=all) and moves `current` (so PREFIX is writable).
    # The hub from its venv, alone in speaking for its service (not its Mosquitto).
    expected = {
        "outpost-agent.service": (
            f"/usr/lib/outpost/outpost-launch --prefix {AGENT_PREFIX} --data {agent_data}",
            agent_data,
            "all",
            [AGENT_PREFIX],
        ),
        "outpost-hub.service": (
            f"/opt/outpost/venv/bin/outpost-hub run --data {hub_data}",
            hub_data,
            "main",
            [],
        ),
    }
    assert [u.name for u in UNITS] == sorted(expected)
    for unit in UNITS:
        command, data, notify_access, writable = expected[unit.name]
        s = settings(unit)
        assert s["ExecStart"] == [command]
        assert s["StateDirectory"] == [data.rsplit("/", 1)[1]]
        assert s["Type"] == ["notify"]
        assert s["NotifyAccess"] == [notify_access]
        assert s["User"] == ["outpost"]
        assert s["Restart"] == ["on-failure"]
        assert s["ProtectSystem"] == ["strict"]
        assert s.get("ReadWritePaths", []) == writable


def test_the_launcher_is_outside_what_the_agent_may_write() -> None:
    """What decides a rollback cannot be changed by the version it judges: the launcher
    sits outside every folder the agent's unit makes writable."""
    s = settings(SYSTEMD / "outpost-agent.service")
    launcher = Path(s["ExecStart"][0].split()[0])
    assert launcher == Path("/usr/lib/outpost/outpost-launch")
    writable = [Path(p.lstrip("-")) for p in s["ReadWritePaths"]]
    writable += [Path("/var/lib") / d for d in s["StateDirectory"]]
    assert all(not launcher.is_relative_to(folder) for folder in writable), writable
    # The launcher goes back to PREFIX/previous by moving PREFIX/current: PREFIX is one.
    assert f"--prefix {AGENT_PREFIX} " in s["ExecStart"][0]
    assert Path(AGENT_PREFIX) in writable
    assert LAUNCH.stat().st_mode & 0o111 == 0o111


def test_the_launcher_needs_only_python_3_8_and_its_standard_library() -> None:
    """It runs on the system's python3 (its shebang), which may be older than the
    agent's venv: Python 3.8 grammar, standard-library imports only. (Library calls
    newer than 3.8 are kept out by review: Path.unlink(missing_ok=) is 3.8's.)"""
    source = LAUNCH.read_text()
    assert source.startswith("#!/usr/bin/env python3\n")
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported
    # Annotations such as `list[str] | None` are 3.9/3.10 at run time: only as strings.
    assert "from __future__ import annotations" in source


def launcher_defaults() -> dict[str, object]:
    """The launcher's option defaults, read from its source (`--deadline`: 120.0...)."""
    defaults: dict[str, object] = {}
    for node in ast.walk(ast.parse(LAUNCH.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for keyword in node.keywords:
                if keyword.arg == "default" and isinstance(keyword.value, ast.Constant):
                    defaults[ast.literal_eval(node.args[0])] = keyword.value.value
    return defaults


def test_the_agent_unit_leaves_the_launcher_room() -> None:
    """A start that hangs is the launcher's to count (its deadline to READY, then up to
    30 s to stop the agent) before systemd's TimeoutStartSec= cuts it short; and systemd
    never gives up starting it (an unattended device must come back by itself), but not
    in a tight loop."""
    defaults = launcher_defaults()
    s = settings(SYSTEMD / "outpost-agent.service")
    # No --deadline or --attempts: the defaults apply.
    assert s["ExecStart"][0].split()[1:] == [
        "--prefix",
        AGENT_PREFIX,
        "--data",
        "/var/lib/outpost-agent",
    ]
    deadline, attempts = defaults["--deadline"], defaults["--attempts"]
    assert isinstance(deadline, float)
    assert isinstance(attempts, int)
    assert float(s["TimeoutStartSec"][0].removesuffix("s")) > deadline + 30
    assert attempts >= 1
    assert s["StartLimitIntervalSec"] == ["0"]  # no start limit: failed for good never
    assert s["Restart"] == ["on-failure"]
    assert float(s["RestartSec"][0].removesuffix("s")) >= 10


@needs_analyze
@pytest.mark.parametrize("unit", [u.name for u in UNITS])
def test_verify_accepts_each_unit_as_installed(tmp_path: Path, unit: str) -> None:
    install_root(tmp_path)
    done = verify(tmp_path, unit)
    # Warnings (an unknown key, a bad value) leave the status 0: no output at all.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")

    # The root is what verify reads: without the programs it refuses the unit.
    bare = tmp_path / "bare"
    install_root(bare, with_programs=False)
    done = verify(bare, unit)
    assert done.returncode != 0
    assert "is not executable" in done.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_exposure_is_at_most_two(unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match[1]) <= MAX_EXPOSURE, done.stdout


def test_sysusers_and_tmpfiles_make_the_user_and_the_data_folders(tmp_path: Path) -> None:
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        assert shutil.which(tool), f"{tool} missing: run scripts/setup.sh --test-tools"
    for kind in ("sysusers", "tmpfiles"):
        target = tmp_path / f"usr/lib/{kind}.d/outpost.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(SYSTEMD / f"outpost.{kind}.conf", target)
    (tmp_path / "etc").mkdir()  # an empty system: sysusers writes its passwd and group
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], check=True, timeout=60)
    passwd = (tmp_path / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("outpost:"))
    uid = int(entry.split(":")[2])
    assert entry.endswith(":/usr/sbin/nologin")

    subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", "outpost.conf"],
        check=True,
        timeout=60,
    )
    for unit in UNITS:
        s = settings(unit)
        folder = tmp_path / "var/lib" / s["StateDirectory"][0]
        assert folder.is_dir()
        # The same mode systemd gives the folder at each start.
        assert f"{folder.stat().st_mode & 0o777:04o}" == s["StateDirectoryMode"][0]
        if os.geteuid() == 0:
            assert folder.stat().st_uid == uid


def test_agent_budgets_are_the_raspberry_pi_4_profiles() -> None:
    budgets = load_profile(PROFILES / "raspberry-pi-4.toml").budgets
    s = settings(SYSTEMD / "outpost-agent.service")
    assert s["MemoryMax"] == [f"{budgets.memory_max_mb}M"]
    assert s["CPUQuota"] == [f"{budgets.cpu_quota_percent}%"]


class NotifyListener:
    """The service manager's end: an abstract datagram socket, read with deadlines.
    Like systemd it asks the kernel for each sender's pid (SO_PASSCRED)."""

    def __init__(self) -> None:
        self.name = f"@outpost-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name[1:])
        self.sock.setblocking(False)
        self.received: list[tuple[float, dict[str, str]]] = []
        self.senders: set[int] = set()

    async def until(self, key: str, *, timeout: float) -> dict[str, str]:
        """Read messages until one carries `key`; fail after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    fields = await self._receive()
                    if key in fields:
                        return fields
        except TimeoutError:
            raise AssertionError(f"no {key} in {timeout} s; got {self.received}") from None

    async def _receive(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(self.sock, wake)
        try:
            await readable
        finally:
            loop.remove_reader(self.sock)
        data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
        for level, kind, value in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                self.senders.add(struct.unpack("3i", value[:12])[0])
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((time.monotonic(), fields))
        return fields

    def close(self) -> None:
        self.sock.close()


async def test_agent_says_ready_pings_the_watchdog_and_stops_on_sigterm(
    hub: Hub, enroll_device: Enroller, tmp_path: Path
) -> None:
    """Under the units' syscall filter and W^X memory (tests/sandbox.py) when this
    machine can apply them, so LiteRT, numpy, SQLite and psutil are shown to live with
    them; inference included."""
    assert hub.parts.broker is not None
    paths, _ = await enroll_device()
    ModelDirectory(paths.models).install(SHIPPED_MODELS[0])
    await hub.parts.broker.stop()  # what the agent confirms stays in its store, to be counted
    listener = NotifyListener()
    # Pings every 3 s, each within the interval: 1.5 s to spare (at 3 s) was little for
    # an agent starting up on a slow, loaded machine; still a real bound.
    watchdog_s = 6.0
    confined = sandbox.unavailable() is None
    agent = AgentProcess(
        paths.root,
        log=tmp_path / "agent.log",
        env={"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))},
        wrapper="tests.sandbox" if confined else None,
    )
    client = None
    try:
        ready = await listener.until("READY", timeout=30)
        # By READY=1 the local API answers; nothing before it claimed the watchdog.
        assert paths.socket.exists()
        client = await wait_socket(paths, agent)
        assert (await client.status())["device_id"]
        assert ready["READY"] == "1"
        assert re.fullmatch(r"broker link \w+; store .*results 0% \(0\).*", ready["STATUS"])
        assert all("WATCHDOG" not in fields for _, fields in listener.received[:-1])
        if confined:  # seccomp mode 2 (a filter) and W^X, as the sandbox promised
            status_file = Path(f"/proc/{agent.process.pid}/status").read_text()
            assert re.search(r"^Seccomp:\s+2$", status_file, re.MULTILINE)

        for _ in range(4):
            await listener.until("WATCHDOG", timeout=watchdog_s)
        pings = [at for at, fields in listener.received if "WATCHDOG" in fields]
        assert max(b - a for a, b in itertools.pairwise(pings)) < watchdog_s

        confirmed = await produce(client, 300, per_call=50)
        folder = SHIPPED_MODELS[0]
        status, answer = await client.infer(
            folder.parent.name, {"input": sample_of(folder).input, "dtype": "int8"}
        )
        assert status == 200, answer

        agent.signal(signal.SIGTERM)
        stopping = await listener.until("STOPPING", timeout=5)
        assert stopping["STOPPING"] == "1"
        assert listener.senders == {agent.process.pid}  # NotifyAccess=main holds
        started = time.monotonic()
        assert await asyncio.to_thread(agent.wait, 10) == 0, agent.output()
        exit_s = time.monotonic() - started
    finally:
        if client is not None:
            await client.close()
        agent.stop()
        listener.close()

    assert exit_s < 10
    log = agent.output()
    assert "agent stopped" in log
    store = AgentStore(paths.store, {})
    try:
        held = await store.batch("results", 0, max_records=10_000, max_bytes=1 << 26)
    finally:
        await store.close()
    assert [body["n"] for _, _, body in held if "n" in body] == confirmed


def stand_in_release(prefix: Path, version: str, body: str) -> None:
    """PREFIX/releases/VERSION, whose venv's `outpost-agent` is a shell script, made
    `current`."""
    bin_dir = prefix / "releases" / version / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    agent = bin_dir / "outpost-agent"
    agent.write_text(f"#!/bin/sh\n{body}\n")
    agent.chmod(0o755)
    (prefix / "current").symlink_to(f"releases/{version}")


def start_launcher(
    prefix: Path, data: Path, log: Path, env: dict[str, str], *more: str
) -> subprocess.Popen[bytes]:
    """The launcher as systemd starts it: by its shebang, in a process group of its own
    (the unit's cgroup), with $WATCHDOG_PID naming the launcher itself (sh's exec keeps
    the pid)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", str(LAUNCH),
             "--prefix", str(prefix), "--data", str(data), *more],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
            start_new_session=True,
        )  # fmt: skip


def children(pid: int) -> dict[int, list[str]]:
    """The child processes of `pid` and their command lines."""
    found = {}
    try:
        pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in pids:
            found[int(child)] = Path(f"/proc/{child}/cmdline").read_text().split("\0")
    except OSError:  # gone meanwhile
        pass
    return found


async def test_the_agent_behind_the_launcher_speaks_for_the_unit(
    hub: Hub, enroll_device: Enroller, tmp_path: Path
) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 come from the agent, the launcher's child (as
    NotifyAccess=all lets them), though $WATCHDOG_PID names the launcher; the ready
    marker names the version; SIGTERM to the unit's processes stops the agent gracefully
    and the launcher exits 0 with no failure counted."""
    paths, _ = await enroll_device()
    prefix = tmp_path / "opt"
    # The test's own agent stands for the release's (exec: the same process).
    stand_in_release(prefix, __version__, f'exec {shlex.quote(sys.executable)} -m edge.cli "$@"')
    listener = NotifyListener()
    # Pings every 3 s, each within the interval: 1.5 s to spare (at 3 s) was little for
    # an agent starting up on a slow, loaded machine; still a real bound.
    watchdog_s = 6.0
    log = tmp_path / "launch.log"
    launcher = start_launcher(
        prefix,
        paths.root,
        log,
        {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))},
    )
    try:
        ready = await listener.until("READY", timeout=60)
        assert ready["READY"] == "1"
        (agent_pid,) = children(launcher.pid)
        for _ in range(3):  # the watchdog went to the agent with the socket
            await listener.until("WATCHDOG", timeout=watchdog_s)
        assert listener.senders == {agent_pid}  # never the launcher (the main process)
        assert (paths.root / "ready").read_text() == __version__

        os.killpg(launcher.pid, signal.SIGTERM)  # KillMode=control-group: both of them
        await listener.until("STOPPING", timeout=10)
        assert await asyncio.to_thread(launcher.wait, 30) == 0, log.read_text()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
        listener.close()
    state = json.loads((paths.root / "launch-state.json").read_text())
    assert state == {"failures": 0, "rolled_back_from": [], "version": __version__}
    assert not (paths.root / "rolled-back.json").exists()


async def test_an_agent_restarting_into_a_new_release_does_not_say_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent's last words before exit 75 (edge/cli.py's `_serve`): a STATUS= line,
    not STOPPING=1. The service goes on running: the launcher starts the new version in
    it at once, and that version's READY=1 and WATCHDOG=1 must still count."""
    listener = NotifyListener()

    class Switched:
        """An agent whose updater just switched `current` to 2.0.0."""

        notifier = Notifier(address(listener.name))

        async def run(self) -> None:
            raise RestartRequested("2.0.0")

    monkeypatch.setattr(heap, "settle", lambda: 0)  # no gc.freeze of the test's own heap
    try:
        code = await cli._serve(cast(Agent, Switched()))
        said = await listener.until("STATUS", timeout=10)
    finally:
        Switched.notifier.close()
        listener.close()
    assert code == EXIT_RESTART
    assert said == {"STATUS": "restarting into agent 2.0.0"}
    assert all("STOPPING" not in fields for _, fields in listener.received)


async def test_the_launcher_pings_the_watchdog_while_a_new_version_starts(
    tmp_path: Path,
) -> None:
    """After exit 75 the service is running with its watchdog armed, and the new version
    pings only once ready (its store, models, local API up: tens of seconds on a Pi):
    the launcher, the main process, pings for it meanwhile."""
    prefix, data = tmp_path / "opt", tmp_path / "data"
    data.mkdir()
    new_link = prefix / "current.new"
    switch = f'ln -sfn releases/2.0.0 "{new_link}"; mv -T "{new_link}" "{prefix}/current"'
    stand_in_release(prefix, "1.0.0", f'printf 1.0.0 > "$3/ready"; {switch}; exit 75')
    # 2.0.0 comes up once the test says so: slow, however long the test watches it.
    go = tmp_path / "go"
    body = f'while [ ! -e "{go}" ]; do sleep 0.05; done; printf 2.0.0 > "$3/ready"; exec sleep 600'
    bin_dir = prefix / "releases" / "2.0.0" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "outpost-agent").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "outpost-agent").chmod(0o755)
    listener = NotifyListener()
    watchdog_s = 6.0  # pings every 3 s: room for a slow, loaded machine, still a real bound
    log = tmp_path / "launch.log"
    launcher = start_launcher(
        prefix, data, log,
        {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))},
    )  # fmt: skip
    try:
        await listener.until("WATCHDOG", timeout=30)  # 1.0.0 came and went meanwhile
        for _ in range(3):  # longer than the watchdog, and within it each time
            await listener.until("WATCHDOG", timeout=watchdog_s)
        assert listener.senders == {launcher.pid}
        assert not (data / "ready").exists()  # 2.0.0 still starting
        pings = [at for at, fields in listener.received if "WATCHDOG" in fields]
        assert max(b - a for a, b in itertools.pairwise(pings)) < watchdog_s
        go.touch()

        async def ready() -> bool:
            assert launcher.poll() is None, log.read_text()
            marker = data / "ready"
            return marker.exists() and marker.read_text() == "2.0.0"

        await eventually(ready, timeout=30, what="2.0.0 ready")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
        listener.close()
    assert "restarting into the new current" in log.read_text()


def test_a_stop_while_the_agent_starts_is_no_failure(tmp_path: Path) -> None:
    """`systemctl stop` or `restart` while a version starts is not that version failing:
    with --attempts 1 a single counted failure would roll it back at once."""
    prefix, data = tmp_path / "opt", tmp_path / "data"
    data.mkdir()
    stand_in_release(prefix, "2.0.0", "exec sleep 600")  # never ready
    (prefix / "releases" / "1.0.0").mkdir()
    (prefix / "previous").symlink_to("releases/1.0.0")
    log = tmp_path / "launch.log"
    launcher = start_launcher(prefix, data, log, {}, "--attempts", "1", "--deadline", "600")
    try:
        # The stand-in agent runs (not whatever finds python3 for the shebang).
        deadline = time.monotonic() + 30
        while ["sleep", "600", ""] not in children(launcher.pid).values():
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the launcher started no agent in 30 s"
            time.sleep(0.05)  # a poll with a deadline
        os.killpg(launcher.pid, signal.SIGTERM)
        assert launcher.wait(30) == 0, log.read_text()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
    assert os.readlink(prefix / "current") == "releases/2.0.0"
    assert not (data / "rolled-back.json").exists()
    assert not (data / "launch-state.json").exists()  # nothing counted
    assert log.read_text() == ""


async def test_hub_says_ready_once_its_link_is_up_and_alone(
    hub_paths: HubPaths, tmp_path: Path
) -> None:
    """READY=1 when store, broker, web endpoint and MQTT link are up; every message from
    the hub's own process (its Mosquitto never learns of the socket); STOPPING=1 and a
    prompt exit that takes Mosquitto along."""
    config = load_config(hub_paths.root)
    listener = NotifyListener()
    log = (tmp_path / "hub.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "run", "--data", str(hub_paths.root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "6000000"},
    )
    try:
        ready = await listener.until("READY", timeout=30)
        for port in (config.mqtt_port, config.web_port):  # both answer by now
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        assert ready["STATUS"] == "0 of 0 devices online; broker link connected"
        await listener.until("WATCHDOG", timeout=6)  # within WATCHDOG_USEC
        await listener.until("WATCHDOG", timeout=6)
        broker_pid = int(pid_file(hub_paths).read_text())
        environ = Path(f"/proc/{broker_pid}/environ").read_bytes()
        assert b"NOTIFY_SOCKET" not in environ

        process.send_signal(signal.SIGTERM)
        await listener.until("STOPPING", timeout=5)
        assert await asyncio.to_thread(process.wait, 15) == 0
        assert listener.senders == {process.pid}
        assert not Path(f"/proc/{broker_pid}").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
        listener.close()
