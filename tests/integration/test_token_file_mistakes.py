"""A token file that holds no API token, given to the operator's CLI against a real running
hub: the answer says what is wrong with the file, in the hub's words, never PyJWT's."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from hub.access import apitokens
from hub.app import Hub
from tests.api_client import ApiClient
from tests.support import REPO, mint_token


async def devices_with(hub: Hub, token_file: Path) -> tuple[int, str]:
    """`outpost-hub devices` with this token file; its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        "devices",
        "--hub",
        hub.config.hub_url,
        "--ca",
        str(hub.paths.ca_cert),
        "--token-file",
        str(token_file),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


LOCAL = "holds no API token (one line of three base64url parts joined by dots"


@pytest.mark.parametrize(
    ("content", "said", "status"),
    [
        # Refused before it leaves the machine: a usage mistake, exit 2.
        ("garbage\n", LOCAL, 2),
        ("two\nlines.of.text\n", LOCAL, 2),
        # Token-shaped: the hub says what is wrong, a refusal, exit 1.
        ("a.b.c", apitokens.MALFORMED, 1),
        ("eyJ.eyJ.sig\n", apitokens.MALFORMED, 1),
    ],
)
async def test_a_file_without_a_token_says_so(
    hub: Hub, tmp_path: Path, content: str, said: str, status: int
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)

    code, err = await devices_with(hub, token_file)

    assert code == status
    assert said in err
    assert "Not enough segments" not in err
    assert "Traceback" not in err


async def test_a_bootstrap_token_in_the_file_is_named(hub: Hub, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(await mint_token(hub) + "\n")

    code, err = await devices_with(hub, token_file)

    assert code == 1
    assert "not an API token but a device's bootstrap token" in err
    assert "Traceback" not in err


async def test_a_real_token_in_the_file_works(hub: Hub, api: ApiClient, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(await api.token("viewer") + "\n")

    code, err = await devices_with(hub, token_file)

    assert (code, err) == (0, "")
