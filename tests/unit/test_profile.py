"""Unit tests of edge/profile.py against the shipped firmware-configs/*.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.profile import DeviceProfile, ProfileError, load_profile, parse_profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "firmware-configs"
SHIPPED = sorted(PROFILES.glob("*.toml"))

VALID = """\
[profile]
name = "test-board"
description = "a board for tests"
arch = "aarch64"

[capabilities]
cores = 4
memory_mb = 2048
accelerator = "none"

[budgets]
max_concurrent_tasks = 2
memory_max_mb = 256
cpu_quota_percent = 200
store_max_mb = 512

[thermal]
sensor = "cpu_thermal"
throttle_c = 70.0
stop_c = 80.0

[runtime]
num_threads = 2
interpreters_per_model = 1
encrypt_store = false
"""


def to_toml(document: dict[str, dict[str, Any]]) -> str:
    """Write a two-level document (tables of scalars) back as TOML."""
    lines: list[str] = []
    for table, values in document.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def changed(table: str, key: str, value: Any) -> str:
    document = tomllib.loads(VALID)
    document.setdefault(table, {})[key] = value
    return to_toml(document)


def refused(text: str) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "test.toml")
    return info.value


# ---------------------------------------------------------------------------- shipped


def test_profiles_folder_exists() -> None:
    assert PROFILES.is_dir()
    assert SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert isinstance(profile, DeviceProfile)
    assert profile.name == path.stem  # a profile is named after its file
    assert profile.runtime.num_threads <= profile.capabilities.cores
    assert profile.thermal.throttle_c < profile.thermal.stop_c


@pytest.mark.parametrize(
    "name", ["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "x86-gateway", "generic"]
)
def test_expected_profiles_exist(name: str) -> None:
    path = PROFILES / f"{name}.toml"
    assert path.is_file()
    assert load_profile(path).name == name


def test_valid_text_loads_with_every_value() -> None:
    profile = parse_profile(VALID, "test.toml")
    assert profile.name == "test-board"
    assert profile.profile.arch == "aarch64"
    assert profile.capabilities.cores == 4
    assert profile.capabilities.memory_mb == 2048
    assert profile.budgets.cpu_quota_percent == 200
    assert profile.thermal.sensor == "cpu_thermal"
    assert profile.thermal.stop_c == 80.0
    assert profile.runtime.num_threads == 2
    assert profile.runtime.encrypt_store is False


def test_to_toml_round_trips_valid() -> None:
    assert parse_profile(to_toml(tomllib.loads(VALID)), "x") == parse_profile(VALID, "x")


def test_optional_tables_take_defaults() -> None:
    profile = parse_profile(changed("runtime", "num_threads", 1), "x")
    assert profile.runtime.interpreters_per_model == 1
    minimal = '[profile]\nname = "m"\n[capabilities]\ncores = 1\nmemory_mb = 64\n'
    minimal += "[budgets]\n[thermal]\n[runtime]\n"
    profile = parse_profile(minimal, "x")
    assert profile.capabilities.accelerator == "none"
    assert profile.budgets.max_concurrent_tasks == 1
    assert profile.thermal.throttle_c < profile.thermal.stop_c
    # Left out whole, as settings.md allows (every key of theirs has a default).
    bare = parse_profile('[profile]\nname = "m"\n[capabilities]\ncores = 1\nmemory_mb = 64\n', "x")
    assert (bare.budgets, bare.thermal, bare.runtime) == (
        profile.budgets,
        profile.thermal,
        profile.runtime,
    )


# ---------------------------------------------------------------------------- refusals


def test_unknown_key_is_refused_naming_it() -> None:
    error = refused(changed("budgets", "gpu_quota", 5))
    assert "budgets.gpu_quota" in str(error)
    assert "test.toml" in str(error)


def test_unknown_table_is_refused_naming_it() -> None:
    assert "network" in str(refused(VALID + "[network]\nmtu = 1500\n"))


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("capabilities", "cores", 0),
        ("capabilities", "cores", 257),
        ("capabilities", "memory_mb", 32),
        ("budgets", "max_concurrent_tasks", 0),
        ("budgets", "memory_max_mb", 16),
        ("budgets", "cpu_quota_percent", 5),
        ("budgets", "store_max_mb", 2),
        ("thermal", "throttle_c", 10.0),
        ("thermal", "stop_c", 130.0),
        ("runtime", "num_threads", 0),
        ("runtime", "interpreters_per_model", 17),
    ],
)
def test_out_of_range_value_is_refused_naming_it(table: str, key: str, value: Any) -> None:
    error = refused(changed(table, key, value))
    assert f"{table}.{key}" in str(error)


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("capabilities", "cores", "4"),
        ("capabilities", "cores", 4.0),
        ("runtime", "encrypt_store", 1),
        ("thermal", "stop_c", "hot"),
        ("profile", "name", 3),
    ],
)
def test_wrong_type_is_refused_naming_it(table: str, key: str, value: Any) -> None:
    assert f"{table}.{key}" in str(refused(changed(table, key, value)))


@pytest.mark.parametrize("accelerator", ["tpu", "CUDA", "", "gpu0"])
def test_bad_accelerator_is_refused(accelerator: str) -> None:
    error = refused(changed("capabilities", "accelerator", accelerator))
    assert "capabilities.accelerator" in str(error)


@pytest.mark.parametrize("accelerator", ["none", "edgetpu", "cuda", "npu", "gpu"])
def test_each_accelerator_is_accepted(accelerator: str) -> None:
    profile = parse_profile(changed("capabilities", "accelerator", accelerator), "x")
    assert profile.capabilities.accelerator == accelerator


def test_bad_arch_is_refused() -> None:
    assert "profile.arch" in str(refused(changed("profile", "arch", "riscv64")))


@pytest.mark.parametrize("throttle", [80.0, 85.0])
def test_throttle_not_below_stop_is_refused(throttle: float) -> None:
    error = refused(changed("thermal", "throttle_c", throttle))
    assert "thermal.throttle_c" in str(error)


def test_more_threads_than_cores_is_refused() -> None:
    error = refused(changed("runtime", "num_threads", 5))
    assert "runtime.num_threads" in str(error)
    assert parse_profile(changed("runtime", "num_threads", 4), "x").runtime.num_threads == 4


def test_missing_required_table_is_refused() -> None:
    document = tomllib.loads(VALID)
    del document["capabilities"]
    assert "capabilities" in str(refused(to_toml(document)))


def test_missing_required_key_is_refused() -> None:
    document = tomllib.loads(VALID)
    del document["profile"]["name"]
    assert "profile.name" in str(refused(to_toml(document)))


@pytest.mark.parametrize(
    "text",
    ["[profile\nname = 'x'\n", "name = \n", "[profile]\nname = 'a'\nname = 'b'\n", "\x00"],
)
def test_invalid_toml_is_refused(text: str) -> None:
    error = refused(text)
    assert "test.toml" in str(error)
    assert "TOML" in str(error)


def test_load_profile_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(changed("capabilities", "cores", 0))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "capabilities.cores" in str(info.value)


def test_missing_profile_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


def test_profile_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.replace("a board for tests", "caf\xe9").encode("latin-1"))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)
