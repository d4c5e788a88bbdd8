"""scripts/install-agent.sh against a throwaway root folder: a real venv built from this
checkout, the systemd files, the data folder and a real enrollment with a test hub; then
uninstall, which keeps the data unless --purge.

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
from tests.support import PROFILES, REPO, mint_token

SCRIPT = REPO / "scripts" / "install-agent.sh"
UNINSTALL = REPO / "scripts" / "uninstall-agent.sh"
VENV = "opt/outpost/venv"
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


@pytest.mark.slow
async def test_install_enrolls_and_uninstall_keeps_data(hub: Hub, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    token = await mint_token(hub)
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text(token)
    token_file.chmod(0o600)

    code, out = await _script(*_install_args(root, token_file, "--no-systemctl"))

    assert code == 0, out
    assert token not in out  # never echoed
    # The systemd files, as shipped.
    for installed, shipped in SYSTEMD_FILES.items():
        assert (root / installed).read_bytes() == (REPO / "systemd" / shipped).read_bytes()
        assert _mode(root / installed) == 0o644
    # The unit's limits from the profile's budgets (generic: 128 MiB, half a core).
    dropin = (root / "etc/systemd/system/outpost-agent.service.d/profile.conf").read_text()
    assert "[Service]\nMemoryMax=128M\nCPUQuota=50%\n" in dropin
    # A venv whose scripts name the interpreter where it will be at run time.
    venv = root / VENV
    assert (venv / "bin" / "outpost-agent").read_text().startswith("#!/opt/outpost/venv/bin/")
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
    assert (root / "opt/outpost/chown.pending").read_text().split() == [
        "outpost:outpost",
        "/var/lib/outpost-agent",
        "recursive",
    ]
    assert "would chown -R outpost:outpost /var/lib/outpost-agent" in out

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
        assert not (root / "opt/outpost/chown.pending").exists()
        wants = root / "etc/systemd/system/multi-user.target.wants/outpost-agent.service"
        assert wants.is_symlink()
        assert json.loads((data / "identity" / "identity.json").read_text()) == identity

    code, out = await _script("--root", root, "--no-systemctl", script=UNINSTALL)

    assert code == 0, out
    assert not (root / VENV).exists()
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
