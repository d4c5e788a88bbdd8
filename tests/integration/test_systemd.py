"""The shipped systemd files: units that `systemd-analyze verify` accepts as installed,
exposure scores of 2.0 or lower, sysusers and tmpfiles that make the user and folders,
budgets that match the smallest board; and the agent speaking the notify protocol as the
unit runs it (READY=1 once its local API answers, WATCHDOG=1 within the interval,
STOPPING=1 and a prompt exit on SIGTERM with nothing it confirmed lost)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.inference.directory import ModelDirectory
from edge.profile import load_profile
from edge.store import AgentStore
from hub.app import Hub
from hub.broker.managed import pid_file
from hub.cli import load_config
from hub.paths import HubPaths
from tests import sandbox
from tests.conftest import Enroller
from tests.integration.test_local_inference import sample_of
from tests.integration.test_store_forward import produce, wait_socket
from tests.support import PROFILES, REPO, SHIPPED_MODELS, AgentProcess

SYSTEMD = REPO / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
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
    names, the entry point of the same name from the venv running these tests."""
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
            shutil.copy2(Path(sys.executable).parent / program.name, target)


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_run_the_installed_venv_on_the_state_directories() -> None:
    expected = {
        "outpost-agent.service": ("outpost-agent", "/var/lib/outpost-agent"),
        "outpost-hub.service": ("outpost-hub", "/var/lib/outpost-hub"),
    }
    assert [u.name for u in UNITS] == sorted(expected)
    for unit in UNITS:
        program, data = expected[unit.name]
        s = settings(unit)
        assert s["ExecStart"] == [f"/opt/outpost/venv/bin/{program} run --data {data}"]
        assert s["StateDirectory"] == [data.rsplit("/", 1)[1]]
        assert s["Type"] == ["notify"]
        assert s["NotifyAccess"] == ["main"]
        assert s["User"] == ["outpost"]
        assert s["Restart"] == ["on-failure"]


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
    watchdog_s = 3.0  # pings every 1.5 s: room for a loaded machine, still a real bound
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
        env={**os.environ, "NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "3000000"},
    )
    try:
        ready = await listener.until("READY", timeout=30)
        for port in (config.mqtt_port, config.web_port):  # both answer by now
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        assert ready["STATUS"] == "0 of 0 devices online; broker link connected"
        await listener.until("WATCHDOG", timeout=3)  # within WATCHDOG_USEC
        await listener.until("WATCHDOG", timeout=3)
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
