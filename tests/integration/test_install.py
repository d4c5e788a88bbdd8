"""scripts/install-agent.sh against a throwaway root folder: a real venv built from this
checkout as the release of its version (/opt/outpost/releases/<version>/venv, `current`
pointing at it), the launcher root's and outside what the agent may write, the systemd
files, the data folder and a real enrollment with a test hub; re-runs beside a version
the agent updated itself to, an older one, a hub's venv of the layout before releases;
then uninstall, which keeps the data unless --purge.

The venv is built as on a device (`python -m venv`, then pip installs the package and its
dependencies from the package index pip is set up to use): most of the first test's
16-21 s here, with the wheels in pip's index at hand; hence `slow`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hub.app import Hub
from outpost import __version__
from tests.integration.test_systemd import settings
from tests.support import PROFILES, REPO, mint_token

SCRIPT = REPO / "scripts" / "install-agent.sh"
UNINSTALL = REPO / "scripts" / "uninstall-agent.sh"
OPT = "opt/outpost"
RELEASE = f"{OPT}/releases/{__version__}"
VENV = f"{RELEASE}/venv"
OLD_VENV = f"{OPT}/venv"  # the layout before releases
LAUNCHER = "usr/lib/outpost/outpost-launch"
DATA = "var/lib/outpost-agent"
SYSTEMD_FILES = {
    "etc/systemd/system/outpost-agent.service": "outpost-agent.service",
    "usr/lib/sysusers.d/outpost.conf": "outpost.sysusers.conf",
    "usr/lib/tmpfiles.d/outpost.conf": "outpost.tmpfiles.conf",
}
IS_ROOT = os.geteuid() == 0


async def _script(*args: object, script: Path = SCRIPT) -> tuple[int, str]:
    """Run the script without blocking the loop (the test hub answers the enrollment)."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _install_args(root: Path, token_file: Path | None, *more: object) -> list[object]:
    args: list[object] = ["--root", root, "--profile", "generic", "--python", sys.executable]
    if token_file is not None:
        args += ["--token-file", token_file]
    return [*args, *more]


def _agent_release(root: Path, version: str) -> None:
    """A release as the agent installs one (edge/selfupdate.py): its folder, marked whole."""
    folder = root / OPT / "releases" / version
    (folder / "venv" / "bin").mkdir(parents=True)
    (folder / ".complete").write_text(version + "\n")


def _links(root: Path) -> tuple[str | None, str | None]:
    """Where `current` and `previous` point."""

    def target(name: str) -> str | None:
        link = root / OPT / name
        return os.readlink(link) if link.is_symlink() else None

    return target("current"), target("previous")


@pytest.mark.slow
async def test_install_enrolls_and_uninstall_keeps_data(hub: Hub, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # An earlier install of the layout before releases: replaced.
    (root / OLD_VENV / "bin").mkdir(parents=True)
    (root / OLD_VENV / "bin" / "outpost-agent").write_text("#!/bin/sh\n")
    # A release folder of this version holding what the installer did not make (another
    # user's link to /etc, as an agent could leave): never built into, but removed
    # without following its links, and built anew. Only root can make another's file.
    planted = root / VENV / "planted"
    if IS_ROOT:
        planted.parent.mkdir(parents=True)
        planted.symlink_to("/etc")
        os.lchown(planted, 65534, 65534)
    token = await mint_token(hub)
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text(token)
    token_file.chmod(0o600)

    code, out = await _script(*_install_args(root, token_file, "--no-systemctl"))

    assert code == 0, out
    assert token not in out  # never echoed
    if IS_ROOT:
        assert f"removing /{RELEASE}: this installer did not make it" in out
        assert not planted.is_symlink()
        assert Path("/etc/passwd").is_file()
    # The systemd files, as shipped.
    for installed, shipped in SYSTEMD_FILES.items():
        assert (root / installed).read_bytes() == (REPO / "systemd" / shipped).read_bytes()
        assert _mode(root / installed) == 0o644
    # The unit's limits from the profile's budgets (generic: 128 MiB, half a core).
    dropin = (root / "etc/systemd/system/outpost-agent.service.d/profile.conf").read_text()
    assert "[Service]\nMemoryMax=128M\nCPUQuota=50%\n" in dropin
    # The release of this checkout's version, whole, and `current` naming it (relative).
    assert (root / RELEASE / ".complete").read_text() == f"{__version__}\n"
    assert _links(root) == (f"releases/{__version__}", None)
    assert (root / OPT / "current" / "venv" / "bin" / "python").exists()
    assert _mode(root / OPT) == _mode(root / OPT / "releases") == 0o755
    assert not (root / OLD_VENV).exists()
    assert "removing /opt/outpost/venv, the layout before releases" in out
    # The launcher: as shipped, root's (the installer's), 0755, outside what the agent
    # may write (its data folder and the unit's ReadWritePaths=, /opt/outpost).
    launcher = root / LAUNCHER
    assert launcher.read_bytes() == (REPO / "systemd" / "outpost-launch").read_bytes()
    assert _mode(launcher) == _mode(launcher.parent) == 0o755
    assert launcher.stat().st_uid == launcher.parent.stat().st_uid == os.geteuid()
    unit = settings(root / "etc/systemd/system/outpost-agent.service")
    assert unit["ExecStart"][0].split()[0] == f"/{LAUNCHER}"
    writable = [*unit["ReadWritePaths"], f"/{DATA}"]
    assert writable == [f"/{OPT}", f"/{DATA}"]
    assert not any(Path(f"/{LAUNCHER}").is_relative_to(folder) for folder in writable)
    # A venv whose scripts name the interpreter where it will be at run time.
    venv = root / VENV
    assert (venv / "bin" / "outpost-agent").read_text().startswith(f"#!/{VENV}/bin/")
    helped = subprocess.run(
        [venv / "bin" / "python", venv / "bin" / "outpost-agent", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # not the checkout: the installed package must be the one imported
    )
    assert helped.returncode == 0, helped.stderr
    assert "enroll" in helped.stdout
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import edge; print(edge.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv))
    # The data folder holds the enrolled identity, private to the agent.
    data = root / DATA
    identity = json.loads((data / "identity" / "identity.json").read_text())
    assert await hub.parts.store.device(identity["device_id"]) is not None
    assert (data / "profile.toml").read_bytes() == (PROFILES / "generic.toml").read_bytes()
    assert _mode(data) == 0o750
    assert _mode(data / "identity") == 0o700
    assert _mode(data / "identity" / "device.key") == 0o600
    for path in data.rglob("*"):  # certificates and the profile may be read, not written
        assert _mode(path) & 0o022 == 0, f"{path} is writable by others"
        if path.suffix == ".key":
            assert _mode(path) == 0o600, path
    # No outpost user in this root: the chown is noted, not done.
    assert [line.split() for line in (root / OPT / "chown.pending").read_text().splitlines()] == [
        ["outpost:outpost", "/var/lib/outpost-agent", "recursive"],
        ["outpost:outpost", "/opt/outpost"],
        ["outpost:outpost", "/opt/outpost/releases"],
    ]
    assert "would chown -R outpost:outpost /var/lib/outpost-agent" in out

    # Again, once the agent updated itself to a newer version: that one stays current
    # (configuration management re-running the installer undoes no update).
    _agent_release(root, "99.0.0")
    for link, target in (("previous", f"releases/{__version__}"), ("current", "releases/99.0.0")):
        (root / OPT / link).unlink(missing_ok=True)
        (root / OPT / link).symlink_to(target)
    code, out = await _script(*_install_args(root, None, "--no-systemctl"))
    assert code == 0, out
    assert "up to date" in out
    assert "kept /opt/outpost/current -> releases/99.0.0" in out
    assert _links(root) == ("releases/99.0.0", f"releases/{__version__}")

    # Newer as PEP 440 orders versions (the agent's and the hub's order), not only by
    # numbers: a local version of this release (+site1) is newer, and stays current.
    local = f"{__version__}+site1"
    _agent_release(root, local)
    (root / OPT / "current").unlink()
    (root / OPT / "current").symlink_to(f"releases/{local}")
    code, out = await _script(*_install_args(root, None, "--no-systemctl"))
    assert code == 0, out
    assert f"kept /opt/outpost/current -> releases/{local}" in out
    assert _links(root) == (f"releases/{local}", f"releases/{__version__}")

    # Again, over an older version: this one becomes current, the older one previous.
    _agent_release(root, "0.0.1")
    (root / OPT / "current").unlink()
    (root / OPT / "current").symlink_to("releases/0.0.1")
    code, out = await _script(*_install_args(root, None, "--no-systemctl"))
    assert code == 0, out
    assert _links(root) == (f"releases/{__version__}", "releases/0.0.1")
    assert f"/opt/outpost/current -> releases/{__version__} (previous -> releases/0.0.1)" in out

    # Again, with a hub on the machine: the venv of the layout before releases is its own.
    hub_unit = root / "etc/systemd/system/outpost-hub.service"
    shutil.copy(REPO / "systemd" / "outpost-hub.service", hub_unit)
    (root / OLD_VENV / "bin").mkdir(parents=True)
    code, out = await _script(*_install_args(root, None, "--no-systemctl"))
    assert code == 0, out
    assert "kept /opt/outpost/venv (the layout before releases)" in out
    assert (root / OLD_VENV / "bin").is_dir()
    hub_unit.unlink()
    shutil.rmtree(root / OLD_VENV)

    # Again, as an image build would (offline systemd tools under --root), with no token:
    # nothing to rebuild, no second enrollment, and now the outpost user exists.
    if IS_ROOT and all(shutil.which(t) for t in ("systemctl", "systemd-sysusers")):
        code, out = await _script(*_install_args(root, None))
        assert code == 0, out
        assert "up to date" in out
        assert "already enrolled" in out
        user = next(
            line.split(":")
            for line in (root / "etc/passwd").read_text().splitlines()
            if line.startswith("outpost:")
        )
        assert all(p.stat().st_uid == int(user[2]) for p in [data, *data.rglob("*")])
        # The agent's folder: it installs updates and moves `current` there. The release
        # built here stays the installer's: the agent cannot change it.
        opt = root / OPT
        for path in (opt, opt / "releases", opt / "current", opt / "previous"):
            assert path.lstat().st_uid == int(user[2]), path
        release = root / RELEASE
        assert all(p.lstat().st_uid == 0 for p in [release, *release.rglob("*")])
        assert not (root / OPT / "chown.pending").exists()
        wants = root / "etc/systemd/system/multi-user.target.wants/outpost-agent.service"
        assert wants.is_symlink()
        assert json.loads((data / "identity" / "identity.json").read_text()) == identity

    code, out = await _script("--root", root, "--no-systemctl", script=UNINSTALL)

    assert code == 0, out
    assert not (root / VENV).exists()
    assert not (root / OPT).exists()  # releases, links, the note: all gone
    assert not (root / LAUNCHER).exists()
    assert not (root / LAUNCHER).parent.exists()
    assert not any((root / installed).exists() for installed in SYSTEMD_FILES)
    assert not (root / "etc/systemd/system/outpost-agent.service.d").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/outpost-agent.service").exists()
    assert json.loads((data / "identity" / "identity.json").read_text()) == identity

    code, out = await _script("--root", root, "--no-systemctl", "--uninstall", "--purge")

    assert code == 0, out
    assert not data.exists()


async def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text("not-looked-at")

    cases = {
        "token file /nonexistent/token: no such file": _install_args(
            root, Path("/nonexistent/token"), "--no-systemctl"
        ),
        "unknown profile: toaster (known: generic ": [
            *_install_args(root, token_file, "--no-systemctl"),
            "--profile",
            "toaster",
        ],
        "unknown profile: ../hub": [
            *_install_args(root, token_file, "--no-systemctl"),
            "--profile",
            "../hub",
        ],
        "--token-file FILE is needed": _install_args(root, None, "--no-systemctl"),
        "--purge goes with --uninstall": [*_install_args(root, token_file), "--purge"],
        "unknown option: --colour": [*_install_args(root, token_file), "--colour"],
        f"root folder {tmp_path / 'nowhere'} does not exist": ["--root", tmp_path / "nowhere"],
    }
    for message, args in cases.items():
        code, out = await _script(*args)
        assert code == 2, (message, out)
        assert f"install-agent: error: {message}" in out
    assert _tree(root) == []


def test_help_describes_the_layout() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    for text in (
        "/opt/outpost/releases/<version>/venv",
        "/opt/outpost/current -> releases/<version>",
        "/usr/lib/outpost/outpost-launch",
        "the agent can only change code that runs as",
    ):
        assert text in done.stdout, text


async def test_a_version_that_is_no_folder_name_is_refused(tmp_path: Path) -> None:
    """The version names a folder: a checkout whose version is not a plain one (or
    cannot be read) is refused before anything changes."""
    tree = tmp_path / "tree"
    for part in ("scripts/install-agent.sh", "systemd", "firmware-configs/generic.toml"):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, tree / part)
    (tree / "outpost").mkdir()
    root = tmp_path / "root"
    root.mkdir()
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text("not-looked-at")
    for init in ('__version__ = "../../etc"\n', "__version__ = (\n", "VERSION = '1.0'\n"):
        (tree / "outpost" / "__init__.py").write_text(init)
        code, out = await _script(
            *_install_args(root, token_file, "--no-systemctl"),
            script=tree / "scripts" / "install-agent.sh",
        )
        assert code == 2, (init, out)
        assert "install-agent: error: cannot read a version" in out, out
        assert "Traceback" not in out
    assert _tree(root) == []


def test_not_root_without_root_prefix_is_refused() -> None:
    # A copy nobody can read and run: the checkout itself may sit in a folder only root
    # may enter (a CI clone in root's temporary folder). The root check comes first.
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        where.chmod(0o755)
        script = where / "install-agent.sh"
        shutil.copy(SCRIPT, script)
        script.chmod(0o755)
        token_file = where / "bootstrap.token"
        token_file.write_text("not-looked-at")
        token_file.chmod(0o644)
        # As root, drop to nobody; as anyone else, the caller is already not root.
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if IS_ROOT else []
        nobody = subprocess.run(
            [*drop, "bash", str(script), "--profile", "generic", "--token-file", str(token_file)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert nobody.returncode == 2
    assert "install-agent: error: installing on this system needs root" in nobody.stderr
