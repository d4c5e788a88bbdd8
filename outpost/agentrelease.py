"""An agent release: the `outpost` wheel and every wheel it needs, per target platform,
named with their sizes and sha256 in a manifest that the hub signs on upload.

`scripts/build-agent-release` writes a release folder: `manifest.json` and the files
under `files/`. The hub checks every file against the manifest when it takes the folder
(`outpost-hub agent-releases upload`), then signs `{manifest, issued_at}` with its
signing key (the key devices already trust for policy and model releases). A device
installs with `pip --no-index` from the files it downloaded and checked: it has no
package index.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519
from msgspec import Meta
from packaging.version import InvalidVersion, Version

from outpost import signing
from outpost.signing import Signed

MANIFEST: Final = "manifest.json"
SIGNED: Final = "release.signed"  # msgpack {document, signature}: a release as devices get it
FILES: Final = "files"
ANY: Final = "any"  # a pure-Python wheel, for every platform
PLATFORMS: Final = ("x86_64", "aarch64", "armv7l")
# What an agent roll-out, and a device's reports on one (wire.ModelState), are named: a
# name no model can have (model names start with a letter or a digit).
ROLLOUT_NAME: Final = "@agent"
VERSION = Annotated[str, Meta(pattern=r"^[0-9]+(\.[0-9]+){1,3}([a-z0-9.+-]{0,32})$")]
MAX_VERSION_LENGTH: Final = 32  # wire.Hello's agent_version, a roll-out's version
# The first version that updates itself: the oldest a release can be for (an older agent
# takes no release at all), and what a build names unless told otherwise.
FIRST_SELF_UPDATING: Final = "0.1.0"
_VERSION = VERSION
_NAME = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.whl$")]
_SHA256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class ReleaseFileError(ValueError):
    """A release folder, manifest or signed release is refused; the message says why."""


class AgentFile(msgspec.Struct, frozen=True):
    name: _NAME  # a wheel, under files/
    sha256: _SHA256
    size: Annotated[int, Meta(ge=1, le=1 << 31)]
    platform: str  # one of `platforms`, or "any"


class AgentManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: _VERSION
    python: Annotated[str, Meta(pattern=r"^3\.[0-9]{1,2}$")]  # the CPython the wheels are for
    platforms: Annotated[list[str], Meta(min_length=1, max_length=8)]
    files: Annotated[list[AgentFile], Meta(min_length=1, max_length=512)]
    min_hub_version: _VERSION  # the oldest hub that can roll it out
    min_agent_version: _VERSION  # the oldest agent that may update to it

    def for_platform(self, platform: str) -> list[AgentFile]:
        """The files a device of `platform` installs."""
        return [f for f in self.files if f.platform in (platform, ANY)]


def write_manifest(folder: Path, manifest: AgentManifest) -> None:
    (folder / MANIFEST).write_bytes(
        json.dumps(msgspec.to_builtins(manifest), indent=2, sort_keys=True).encode() + b"\n"
    )


def read_folder(folder: Path) -> AgentManifest:
    """A release folder's manifest, once every file it names is there whole (size and
    sha256) and no other file is; `ReleaseFileError` naming what is wrong."""
    try:
        raw = (folder / MANIFEST).read_bytes()
    except OSError as exc:
        raise ReleaseFileError(
            f"{folder}: no {MANIFEST} ({exc.strerror or exc}): is it a folder made by "
            "scripts/build-agent-release?"
        ) from exc
    try:
        manifest = msgspec.json.decode(raw, type=AgentManifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ReleaseFileError(f"{folder / MANIFEST}: {exc}") from exc
    check_manifest(manifest)
    named = {f.name for f in manifest.files}
    present = {p.name for p in (folder / FILES).iterdir()} if (folder / FILES).is_dir() else set()
    if extra := sorted(present - named):
        raise ReleaseFileError(f"{folder / FILES}: files the manifest does not name: {extra}")
    for entry in manifest.files:
        check_file(folder / FILES / entry.name, entry)
    return manifest


def version_order(version: str) -> Version:
    """A release version as pip orders it (PEP 440: 0.3.0rc1 before 0.3.0, 0.3.0.dev1
    before 0.3.0rc1, 1.10 after 1.9); `ReleaseFileError` for one pip could not install."""
    try:
        return Version(version)
    except InvalidVersion as exc:
        raise ReleaseFileError(f"version {version!r} is not a PEP 440 version") from exc


def check_manifest(manifest: AgentManifest) -> None:
    for field in ("version", "min_agent_version", "min_hub_version"):
        value = getattr(manifest, field)
        if len(value) > MAX_VERSION_LENGTH:  # a hello and a roll-out carry at most this
            raise ReleaseFileError(
                f"manifest: {field} {value!r} is longer than {MAX_VERSION_LENGTH} characters"
            )
        version_order(value)
    if version_order(manifest.min_agent_version) > version_order(manifest.version):
        raise ReleaseFileError(
            f"manifest: min_agent_version {manifest.min_agent_version} is newer than the "
            f"release itself ({manifest.version}): no agent could ever update to it"
        )
    unknown = sorted(set(manifest.platforms) - set(PLATFORMS))
    if unknown:
        raise ReleaseFileError(f"manifest: unknown platforms {unknown} (known: {PLATFORMS})")
    names = [f.name for f in manifest.files]
    if len(set(names)) != len(names):
        raise ReleaseFileError("manifest: a file is named twice")
    for entry in manifest.files:
        if entry.platform != ANY and entry.platform not in manifest.platforms:
            raise ReleaseFileError(
                f"manifest: {entry.name} is for {entry.platform}, not one of its platforms"
            )
    if not any(f.name.startswith("outpost-") for f in manifest.files):
        raise ReleaseFileError("manifest: no outpost wheel among its files")


def check_file(path: Path, entry: AgentFile) -> None:
    """The file is there, of the size and sha256 the manifest names."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ReleaseFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise ReleaseFileError(
            f"{path}: does not match the manifest ({size:,} bytes, sha256 "
            f"{digest.hexdigest()[:16]}...; the manifest says {entry.size:,} bytes, "
            f"{entry.sha256[:16]}...)"
        )


def sign(key: ed25519.Ed25519PrivateKey, manifest: AgentManifest, issued_at: float) -> Signed:
    body = {"agent_release": msgspec.to_builtins(manifest), "issued_at": issued_at}
    return signing.sign(key, body)


def verify(public: ed25519.Ed25519PublicKey, signed: Signed) -> tuple[AgentManifest, float]:
    """The signed manifest, or `ReleaseFileError` naming what is wrong (signature first)."""
    try:
        body: dict[str, Any] = signing.open_signed(public, signed, "agent release")
    except signing.SignatureError as exc:
        raise ReleaseFileError(str(exc)) from exc
    if set(body) != {"agent_release", "issued_at"}:
        raise ReleaseFileError("agent release: signed document lacks agent_release or issued_at")
    try:
        manifest = msgspec.convert(body["agent_release"], AgentManifest)
    except msgspec.ValidationError as exc:
        raise ReleaseFileError(f"agent release: {exc}") from exc
    check_manifest(manifest)
    issued_at = body["issued_at"]
    if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
        raise ReleaseFileError(f"agent release: issued_at must be a number, got {issued_at!r}")
    return manifest, float(issued_at)


def write_signed(folder: Path, signed: Signed) -> None:
    (folder / SIGNED).write_bytes(
        msgspec.msgpack.encode({"document": signed.document, "signature": signed.signature})
    )


def read_signed(folder: Path) -> Signed:
    """The signed release in `folder` (not yet verified); `ReleaseFileError` if none."""
    try:
        body = msgspec.msgpack.decode((folder / SIGNED).read_bytes())
        return Signed(bytes(body["document"]), bytes(body["signature"]))
    except (OSError, msgspec.DecodeError, KeyError, TypeError) as exc:
        raise ReleaseFileError(f"{folder / SIGNED}: not a signed agent release ({exc})") from exc
