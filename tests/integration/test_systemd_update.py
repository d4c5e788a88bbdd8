"""An agent update as systemd sees it: the shipped agent unit and launcher under a booted
systemd (systemd-nspawn over this machine's own /usr, read-only: no root to build), an
agent that switches `current` to a new release and exits 75 through edge/cli.py's own
restart path, and a new version that takes longer than the watchdog to come up.

The service must stay `active (running)` throughout, under the same launcher, with no
restart: no STOPPING=1 from the old agent (systemd would take the running service for
stopping, ignore the new READY=1 and kill it after TimeoutStopSec: Result=timeout), and
WATCHDOG=1 from the launcher while the new version starts (else Result=watchdog).

The unit is the shipped one, but for a drop-in: the launcher from /srv (this machine's
/usr is the root's, read-only), and a shorter watchdog and stop timeout, so the test
sees them expire in seconds. Needs root and systemd-nspawn, as test_systemd_boot does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.integration.test_systemd import LAUNCH, SYSTEMD
from tests.integration.test_systemd_boot import Machine, _tools

UNIT = "outpost-agent.service"
WATCHDOG_S = 6
STOP_TIMEOUT_S = 5
OUTPOST_UID = 990  # the agent's user in the root (sysusers would pick one like it)
DROP_IN = f"""[Service]
ExecStart=
ExecStart=/srv/outpost-launch --prefix /opt/outpost --data /var/lib/outpost-agent
WatchdogSec={WATCHDOG_S}s
TimeoutStopSec={STOP_TIMEOUT_S}s
"""
# 1.0.0: READY=1 and pings; then, once the test says so, what an agent does after it
# installed a release: switch `current` and leave through edge/cli.py's `_serve`, 75.
# This machine's interpreter stands in for the release's: the project's code from /src,
# its dependencies from the test venv's site-packages (/venv-site).
SWITCHING = """\
import asyncio, os, site, sys
site.addsitedir("/venv-site")
sys.path.insert(0, "/src")
from edge import cli
from edge.agentupdate import RestartRequested
from outpost.sdnotify import Notifier

data = sys.argv[3]

class Switching:
    notifier = Notifier.from_environ()

    async def run(self):
        self.notifier.ready("agent 1.0.0 up")
        with open(os.path.join(data, "ready"), "w") as marker:
            marker.write("1.0.0")
        while not os.path.exists("/srv/switch"):
            self.notifier.watchdog()
            await asyncio.sleep(0.5)
        os.symlink("releases/2.0.0", "/opt/outpost/current.new")
        os.replace("/opt/outpost/current.new", "/opt/outpost/current")
        raise RestartRequested("2.0.0")

sys.exit(asyncio.run(cli._serve(Switching())))
"""
# 2.0.0: slow to come up (until the test says so), then READY=1 and a ping every second,
# each counted in DATA/pings.
SLOW = """\
import os, socket, sys, time
data = sys.argv[3]
where = os.environ["NOTIFY_SOCKET"]
where = "\\0" + where[1:] if where.startswith("@") else where
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
while not os.path.exists("/srv/come-up"):
    time.sleep(0.1)
sock.sendto(b"READY=1\\nSTATUS=agent 2.0.0 up", where)
with open(os.path.join(data, "ready"), "w") as marker:
    marker.write("2.0.0")
pings = 0
while True:
    sock.sendto(b"WATCHDOG=1", where)
    pings += 1
    with open(os.path.join(data, "pings.new"), "w") as out:
        out.write(str(pings))
    os.replace(os.path.join(data, "pings.new"), os.path.join(data, "pings"))
    time.sleep(1)
"""


def bare_root(root: Path) -> None:
    """A root that borrows this machine's /usr (bound read-only at boot): the folders
    systemd needs, its users, the unit with its drop-in, the launcher, and two stand-in
    releases in /opt/outpost."""
    for folder in ("dev", "proc", "sys", "run", "tmp", "var/lib", "var/log", "usr", "root",
                   "etc/systemd/system/outpost-agent.service.d", "opt/outpost", "srv"):  # fmt: skip
        (root / folder).mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")
    etc = root / "etc"
    shutil.copy("/etc/os-release", etc / "os-release")
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        f"outpost:x:{OUTPOST_UID}:{OUTPOST_UID}::/var/lib/outpost-agent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\noutpost:x:{OUTPOST_UID}:\n")
    units = etc / "systemd" / "system"
    shutil.copy(SYSTEMD / UNIT, units / UNIT)
    (units / f"{UNIT}.d" / "test.conf").write_text(DROP_IN)
    shutil.copy2(LAUNCH, root / "srv" / "outpost-launch")
    opt = root / "opt" / "outpost"
    for version, program in (("1.0.0", SWITCHING), ("2.0.0", SLOW)):
        bin_dir = opt / "releases" / version / "venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "agent.py").write_text(program)
        agent = bin_dir / "outpost-agent"
        agent.write_text('#!/bin/sh\nexec /usr/bin/python3 "$(dirname "$0")/agent.py" "$@"\n')
        agent.chmod(0o755)
    (opt / "current").symlink_to("releases/1.0.0")
    for path in (opt, *opt.iterdir()):  # the agent's own, as the installer leaves it
        os.lchown(path, OUTPOST_UID, OUTPOST_UID)


@pytest.mark.timeout(600)
def test_an_update_through_exit_75_keeps_the_service_running(tmp_path: Path) -> None:
    _tools()
    assert Path("/usr/bin/python3").is_file(), "the launcher runs on the system's python3"
    base = tmp_path / "base"
    bare_root(base)
    (tmp_path / "wheels").mkdir()
    site_packages = Path(sysconfig.get_paths(vars={"base": sys.prefix})["purelib"]).resolve()
    machine = Machine(
        base, tmp_path / "wheels", tmp_path,
        binds=("--bind-ro=/usr", f"--bind-ro={site_packages}:/venv-site"),
    )  # fmt: skip
    try:
        _exercise(machine)
    finally:
        machine.stop()
        shutil.rmtree(machine.root, ignore_errors=True)


def _exercise(machine: Machine) -> None:
    machine.wait_for(machine.path("/run/systemd/private").exists, "systemd's socket", 60)
    machine.run("systemctl", "is-system-running", "--wait", check=False, timeout=120)
    srv, data = machine.path("/srv"), machine.path("/var/lib/outpost-agent")

    machine.run("systemctl", "start", UNIT)  # returns at 1.0.0's READY=1
    props = ("ActiveState", "SubState", "Result", "NRestarts", "MainPID")
    first = machine.show(UNIT, *props)
    # The agent writes its ready marker just after READY=1, which `start` returned at.
    machine.wait_for(lambda: _marker(data) == "1.0.0", "1.0.0's ready marker", 60)

    def running() -> str:
        """The watchdog's last ping (systemd's clock, µs), once the service is checked
        to run as it did, under the same launcher and never restarted."""
        now = machine.show(UNIT, *props, "WatchdogTimestampMonotonic")
        states = (now["ActiveState"], now["SubState"], now["Result"], now["NRestarts"])
        if states != ("active", "running", "success", "0") or now["MainPID"] != first["MainPID"]:
            journal = machine.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat")
            raise AssertionError(f"not as it ran under {first['MainPID']}: {now}\n{journal}")
        return now["WatchdogTimestampMonotonic"]

    running()
    (srv / "switch").touch()  # 1.0.0 switches to 2.0.0 and exits 75
    # The launcher starts 2.0.0 (the ready marker goes first), which keeps starting for
    # longer than the watchdog allows, and the stop timeout: the launcher's pings move
    # the watchdog's timestamp meanwhile.
    machine.wait_for(lambda: not (data / "ready").exists(), "the restart into 2.0.0", 60)
    pings: set[str] = set()

    def launcher_pinged() -> bool:
        pings.add(running())
        return len(pings) > 1 + (WATCHDOG_S + STOP_TIMEOUT_S) // (WATCHDOG_S // 2)

    machine.wait_for(launcher_pinged, "the launcher's pings while 2.0.0 starts", 120)
    assert not (data / "ready").exists()  # 2.0.0 still starting, all that while

    (srv / "come-up").touch()
    # Up, and still running well past the watchdog and the stop timeout.
    enough = WATCHDOG_S + STOP_TIMEOUT_S + 2

    def pinged() -> bool:
        running()
        count = data / "pings"
        return count.exists() and int(count.read_text() or 0) >= enough

    machine.wait_for(pinged, f"{enough} pings from 2.0.0", 120)
    assert _marker(data) == "2.0.0"
    assert os.readlink(machine.path("/opt/outpost/current")) == "releases/2.0.0"
    journal = machine.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat")
    assert "restarting into the new current" in journal


def _marker(data: Path) -> str:
    """The version the ready marker names, "" while there is none."""
    try:
        return (data / "ready").read_text()
    except FileNotFoundError:
        return ""
