"""Build an agent release from this checkout: the `outpost` wheel, and every wheel it
needs for each target platform (CPython 3.11, manylinux), with `manifest.json` naming
each file's platform, size and sha256 (outpost/agentrelease.py). The hub signs the
manifest when it takes the folder (`outpost-hub agent-releases upload DIR`).

    scripts/build-agent-release --out releases/0.2.0 [--platform aarch64 ...]

The platforms default to the `arch` of every shipped device profile (firmware-configs/).
Wheels come from the package index (pip download --only-binary): a package with no wheel
for a platform is named, and the build stops: devices install with `--no-index` and
cannot build from source. `--no-dependencies` writes the outpost wheel alone, for devices
whose dependencies are already the ones the new version needs.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import msgspec

from outpost import __version__, agentrelease
from outpost.agentrelease import (
    ANY,
    FILES,
    PLATFORMS,
    AgentFile,
    AgentManifest,
    ReleaseFileError,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent
PYTHON = "3.11"
# pip's platform tags for each machine (the wheels PyPI publishes for them).
TAGS = {
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64"],
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64"],
    "armv7l": ["manylinux2014_armv7l", "manylinux_2_31_armv7l", "linux_armv7l"],
}


SOURCE = ("pyproject.toml", "README.md", "edge", "hub", "outpost")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


class BuildError(RuntimeError):
    """The release cannot be built; the message says why."""


def profile_platforms() -> list[str]:
    found = set()
    for path in sorted((REPO / "firmware-configs").glob("*.toml")):
        arch = tomllib.loads(path.read_text()).get("profile", {}).get("arch")
        if arch in PLATFORMS:
            found.add(arch)
    return sorted(found) or ["x86_64"]


def build(
    out: Path,
    platforms: list[str],
    *,
    dependencies: bool,
    version: str = __version__,
    min_agent_version: str = agentrelease.FIRST_SELF_UPDATING,
) -> AgentManifest:
    files = out / FILES
    files.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as source:
        # From a copy of what the wheel is made of: a build in the checkout would leave
        # build/ there, and two builds at once would share it.
        for part in SOURCE:
            if (REPO / part).is_dir():
                shutil.copytree(REPO / part, Path(source) / part, ignore=_IGNORE)
            else:
                shutil.copy2(REPO / part, Path(source) / part)
        if version != __version__:  # a release of this checkout under another number
            _set_version(Path(source), version)
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(files), source],
            "building the outpost wheel",
        )
    (wheel,) = sorted(files.glob("outpost-*.whl"))
    entries = [file_entry(wheel, ANY)]
    if dependencies:
        for platform in platforms:
            entries += _dependencies(wheel, platform, files, {e.name for e in entries})
    manifest = AgentManifest(
        version=version,
        python=PYTHON,
        platforms=platforms,
        files=sorted(entries, key=lambda e: (e.name, e.platform)),
        min_hub_version=__version__,
        min_agent_version=min_agent_version,
    )
    write_manifest(out, manifest)
    return manifest


def _check_min_agent(min_agent: str, version: str) -> None:
    """Refuse a --min-agent-version that is no version, or newer than the release
    (no agent could ever update to it), before the build."""
    try:
        oldest = agentrelease.version_order(min_agent)
        release = agentrelease.version_order(version)
    except ReleaseFileError as exc:
        raise BuildError(f"--min-agent-version {min_agent!r}: {exc}") from exc
    if oldest > release:
        raise BuildError(
            f"--min-agent-version {min_agent} is newer than the release ({version}): "
            "no agent could ever update to it"
        )


def _dependencies(wheel: Path, platform: str, files: Path, have: set[str]) -> list[AgentFile]:
    """The wheels `wheel` needs on `platform`, and pip's (a device's running version
    installs the next one's venv without ensurepip, pip from the release among the
    rest), downloaded beside it."""
    with tempfile.TemporaryDirectory() as staging:
        tags = [a for tag in TAGS[platform] for a in ("--platform", tag)]
        _run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
             *tags, "--python-version", PYTHON, "--implementation", "cp",
             "-d", staging, str(wheel), "pip"],
            f"downloading the wheels for {platform} (a package without a wheel for it "
            "is named above: it would need a build on the device)",
        )  # fmt: skip
        out = []
        for found in sorted(Path(staging).glob("*.whl")):
            if found.name.startswith("outpost-"):
                continue
            pure = found.name.endswith("-none-any.whl")
            if pure and found.name in have:
                continue
            target = files / found.name
            if not target.exists():
                found.replace(target)
            out.append(file_entry(target, ANY if pure else platform))
            have.add(found.name)
        return out


def _set_version(source: Path, version: str) -> None:
    for path, old, new in (
        (source / "pyproject.toml", f'version = "{__version__}"', f'version = "{version}"'),
        (
            source / "outpost" / "__init__.py",
            f'__version__ = "{__version__}"',
            f'__version__ = "{version}"',
        ),
    ):
        text = path.read_text()
        if old not in text:
            raise BuildError(f"{path.name}: no {old!r} to change")
        path.write_text(text.replace(old, new, 1))


def file_entry(path: Path, platform: str) -> AgentFile:
    """The manifest's entry for the file at `path`: its name, sha256 and size."""
    data = path.read_bytes()
    return AgentFile(path.name, hashlib.sha256(data).hexdigest(), len(data), platform)


def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{what} failed:\n{(done.stderr or done.stdout).strip()[-3000:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    parser.add_argument(
        "--platform",
        action="append",
        choices=PLATFORMS,
        help="a target machine (repeatable; default: every shipped profile's)",
    )
    parser.add_argument("--no-dependencies", action="store_true", help="the outpost wheel alone")
    parser.add_argument(
        "--version",
        default=__version__,
        help=f"the release's version (default this checkout's, {__version__})",
    )
    parser.add_argument(
        "--min-agent-version",
        default=agentrelease.FIRST_SELF_UPDATING,
        help="the oldest agent that may update to it (default "
        f"{agentrelease.FIRST_SELF_UPDATING}, the first that updates itself)",
    )
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    platforms = sorted(set(args.platform or profile_platforms()))
    # Checked before the build, which takes a while.
    try:
        msgspec.convert(args.version, agentrelease.VERSION)
    except msgspec.ValidationError as exc:
        parser.error(f"--version {args.version!r}: not a version ({exc})")
    try:
        _check_min_agent(args.min_agent_version, args.version)
    except BuildError as exc:
        parser.error(str(exc))
    try:
        manifest = build(
            args.out,
            platforms,
            dependencies=not args.no_dependencies,
            version=args.version,
            min_agent_version=args.min_agent_version,
        )
    except BuildError as exc:
        print(f"build-agent-release: error: {exc}", file=sys.stderr)
        return 1
    size = sum(f.size for f in manifest.files)
    print(
        f"agent release {manifest.version} for {', '.join(platforms)}: {len(manifest.files)} "
        f"files, {size / 2**20:.1f} MiB, in {args.out}"
    )
    print(f"upload it with: outpost-hub agent-releases upload --data HUB_DATA {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
