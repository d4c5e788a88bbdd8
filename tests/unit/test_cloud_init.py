"""The first-boot templates in firmware-configs/cloud-init/: one per board profile, valid
cloud-config once filled in, and naming only files, profiles and options that exist."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from tests.support import PROFILES, REPO

TEMPLATES = PROFILES / "cloud-init"
RELEASE = "/usr/local/src/outpost-release"  # root-only: not in what the agent may write
TOKEN_FILE = "/run/outpost/bootstrap.token"
VARIABLES = {
    "outpost_release_url": "https://releases.example/outpost-0.1.0.tar.gz",
    "bootstrap_token": "eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiJ4In0.c2ln",
}
PROFILE_NAMES = sorted(p.stem for p in PROFILES.glob("*.toml"))


def _render(text: str) -> str:
    def fill(match: re.Match[str]) -> str:
        return VARIABLES[match.group(1)]  # a KeyError names an unknown variable

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", fill, text)


def _load(profile: str) -> tuple[str, dict[str, Any]]:
    text = (TEMPLATES / f"{profile}.yaml").read_text()
    config = yaml.safe_load(_render(text))
    assert isinstance(config, dict)
    return text, config


def _commands(config: dict[str, Any]) -> list[str]:
    """Each runcmd entry as the shell line it runs: a string, the script of an
    `[sh, -c, SCRIPT, NAME, ARGS...]` list (its arguments after it), or a plain argv."""
    lines = []
    for c in config["runcmd"]:
        if isinstance(c, str):
            lines.append(c)
        elif c[:2] == ["sh", "-c"]:
            lines.append(" ".join([c[2], *c[4:]]))
        else:
            lines.append(shlex.join(c))
    return lines


def _script_options() -> set[str]:
    script = (REPO / "scripts" / "install-agent.sh").read_text()
    return set(re.findall(r"^\s+(--[a-z-]+)\)", script, re.M))


def test_one_template_per_profile() -> None:
    assert sorted(p.stem for p in TEMPLATES.glob("*.yaml")) == PROFILE_NAMES
    assert PROFILE_NAMES


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_template_is_cloud_config_with_its_variables(profile: str) -> None:
    text, config = _load(profile)

    assert text.startswith("#cloud-config\n")
    assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text)) == set(VARIABLES)
    (token,) = [f for f in config["write_files"] if f["path"] == TOKEN_FILE]
    assert token["content"] == VARIABLES["bootstrap_token"]
    assert token["permissions"] == "0600"
    assert token["owner"] == "root:root"
    assert any(VARIABLES["outpost_release_url"] in c for c in _commands(config))


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_template_names_only_what_exists(profile: str) -> None:
    _, config = _load(profile)
    commands = _commands(config)

    # Every file of the release a command names is a file of this repository.
    named = {m for c in commands for m in re.findall(rf"{RELEASE}/([\w./-]+)", c)}
    assert named == {"scripts/install-agent.sh"}
    assert all((REPO / path).is_file() for path in named)
    (install,) = [c for c in commands if "install-agent.sh" in c]
    words = shlex.split(install.split(";")[0])
    # Its own profile, an existing one; options the script takes; the token written above.
    assert words[words.index("--profile") + 1] == profile
    assert {w for w in words if w.startswith("--")} <= _script_options()
    assert words[words.index("--token-file") + 1] == TOKEN_FILE
    # The token is removed whether the install worked or not.
    assert install.rstrip().endswith(f"rm -f {TOKEN_FILE}; exit $status")
