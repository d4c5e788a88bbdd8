"""Device profiles (`firmware-configs/*.toml`): what a class of device can do and may use."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from outpost import schema

Accelerator = Literal["none", "edgetpu", "cuda", "npu", "gpu"]


class ProfileError(ValueError):
    """A profile file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ProfileInfo:
    name: str = schema.setting(help="profile name, e.g. raspberry-pi-4", max_len=64)
    description: str = schema.setting("", help="what hardware this profile is for", max_len=256)
    arch: Literal["aarch64", "armv7l", "x86_64", "any"] = schema.setting(
        "any", help="CPU architecture the profile expects"
    )


@dataclass(frozen=True)
class ProfileCapabilities:
    cores: int = schema.setting(help="CPU cores of the board", min=1, max=256)
    memory_mb: int = schema.setting(help="memory of the board, MiB", min=64, max=1 << 20)
    accelerator: Accelerator = schema.setting("none", help="inference accelerator, if any")


@dataclass(frozen=True)
class Budgets:
    max_concurrent_tasks: int = schema.setting(1, help="tasks run at once", min=1, max=64)
    memory_max_mb: int = schema.setting(
        256, help="memory the agent may use (systemd MemoryMax)", min=32, max=1 << 20
    )
    cpu_quota_percent: int = schema.setting(
        100, help="CPU the agent may use, 100 = one core (systemd CPUQuota)", min=10, max=25600
    )
    store_max_mb: int = schema.setting(
        256, help="disk the local store may fill, MiB", min=8, max=1 << 20
    )


@dataclass(frozen=True)
class Thermal:
    sensor: str = schema.setting("", help="psutil sensor to watch; empty = hottest", max_len=64)
    throttle_c: float = schema.setting(70.0, help="above this, take fewer tasks", min=30, max=120)
    stop_c: float = schema.setting(80.0, help="above this, take no tasks", min=30, max=125)


@dataclass(frozen=True)
class Runtime:
    num_threads: int = schema.setting(1, help="interpreter threads per model", min=1, max=64)
    interpreters_per_model: int = schema.setting(
        1, help="interpreters kept per model (parallel requests)", min=1, max=16
    )
    encrypt_store: bool = schema.setting(False, help="encrypt stored payloads (AES-GCM)")


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile."""

    profile: ProfileInfo = schema.setting(help="identity of the profile")
    capabilities: ProfileCapabilities = schema.setting(help="what the hardware offers")
    budgets: Budgets = schema.setting(help="resource budgets of the agent")
    thermal: Thermal = schema.setting(help="thermal limits")
    runtime: Runtime = schema.setting(help="inference runtime settings")

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
