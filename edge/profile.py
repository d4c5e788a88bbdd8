"""Device profiles (`firmware-configs/*.toml`): what a class of device can do and may use."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from outpost import schema
from outpost.schema import Struct

Accelerator = Literal["none", "edgetpu", "cuda", "npu", "gpu"]


class ProfileError(ValueError):
    """A profile file is unreadable or invalid; the message names the file and the key."""


class ProfileInfo(Struct, frozen=True):
    name: Annotated[str, Meta(max_length=64, description="profile name, e.g. raspberry-pi-4")]
    description: Annotated[
        str, Meta(max_length=256, description="what hardware this profile is for")
    ] = ""
    arch: Annotated[
        Literal["aarch64", "armv7l", "x86_64", "any"],
        Meta(description="CPU architecture the profile expects"),
    ] = "any"


class ProfileCapabilities(Struct, frozen=True):
    cores: Annotated[int, Meta(ge=1, le=256, description="CPU cores of the board")]
    memory_mb: Annotated[int, Meta(ge=64, le=1 << 20, description="memory of the board, MiB")]
    accelerator: Annotated[Accelerator, Meta(description="inference accelerator, if any")] = "none"


class Budgets(Struct, frozen=True):
    max_concurrent_tasks: Annotated[int, Meta(ge=1, le=64, description="tasks run at once")] = 1
    memory_max_mb: Annotated[
        int, Meta(ge=32, le=1 << 20, description="memory the agent may use (systemd MemoryMax)")
    ] = 256
    cpu_quota_percent: Annotated[
        int,
        Meta(
            ge=10, le=25600, description="CPU the agent may use, 100 = one core (systemd CPUQuota)"
        ),
    ] = 100
    store_max_mb: Annotated[
        int, Meta(ge=8, le=1 << 20, description="disk the local store may fill, MiB")
    ] = 256


class Thermal(Struct, frozen=True):
    sensor: Annotated[
        str, Meta(max_length=64, description="psutil sensor to watch; empty = hottest")
    ] = ""
    throttle_c: Annotated[
        float, Meta(ge=30, le=120, description="above this, take fewer tasks")
    ] = 70.0
    stop_c: Annotated[float, Meta(ge=30, le=125, description="above this, take no tasks")] = 80.0


class Runtime(Struct, frozen=True):
    num_threads: Annotated[int, Meta(ge=1, le=64, description="interpreter threads per model")] = 1
    interpreters_per_model: Annotated[
        int, Meta(ge=1, le=16, description="interpreters kept per model (parallel requests)")
    ] = 1
    encrypt_store: Annotated[bool, Meta(description="encrypt stored payloads (AES-GCM)")] = False


class DeviceProfile(Struct, frozen=True):
    """A validated device profile."""

    profile: Annotated[ProfileInfo, Meta(description="identity of the profile")]
    capabilities: Annotated[ProfileCapabilities, Meta(description="what the hardware offers")]
    # Tables whose every key has a default may be left out whole (settings.md says so).
    budgets: Annotated[Budgets, Meta(description="resource budgets of the agent")] = Budgets()
    thermal: Annotated[Thermal, Meta(description="thermal limits")] = Thermal()
    runtime: Annotated[Runtime, Meta(description="inference runtime settings")] = Runtime()

    def __post_init__(self) -> None:
        if self.thermal.throttle_c >= self.thermal.stop_c:
            raise schema.SchemaError(
                "thermal.throttle_c",
                f"must be below thermal.stop_c ({self.thermal.stop_c}), "
                f"got {self.thermal.throttle_c}",
            )
        if self.runtime.num_threads > self.capabilities.cores:
            raise schema.SchemaError(
                "runtime.num_threads",
                f"must not exceed capabilities.cores ({self.capabilities.cores}), "
                f"got {self.runtime.num_threads}",
            )

    @property
    def name(self) -> str:
        return self.profile.name


def parse_profile(text: str, source: str) -> DeviceProfile:
    """Parse and validate profile TOML; `source` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return schema.load(DeviceProfile, document, "")
    except schema.SchemaError as exc:
        raise ProfileError(f"{source}: {exc}") from exc


def load_profile(path: Path) -> DeviceProfile:
    """Read and validate a profile file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    return parse_profile(text, str(path))


# The profiles shipped with Outpost, beside the packages in a checkout or an install
# made from one (scripts/install-agent.sh).
SHIPPED = Path(__file__).resolve().parents[1] / "firmware-configs"


def shipped_names() -> list[str]:
    """Names of the shipped profiles (raspberry-pi-4, ...)."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml")) if SHIPPED.is_dir() else []


def find_profile(given: str) -> Path:
    """The profile file `given` names: a path to a file, or the name of a shipped profile
    (`raspberry-pi-4`); ProfileError listing the shipped names when it is neither."""
    path = Path(given)
    if path.is_file():
        return path
    if "/" not in given and not given.endswith(".toml") and (SHIPPED / f"{given}.toml").is_file():
        return SHIPPED / f"{given}.toml"
    known = ", ".join(shipped_names()) or "none found"
    raise ProfileError(
        f"profile {given!r} is neither a file nor the name of a shipped profile ({known})"
    )
