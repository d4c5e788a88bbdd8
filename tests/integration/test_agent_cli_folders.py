"""`outpost-agent` and the data folder it is given (child processes, as a user runs it):
a file is called a file, not missing; a failed `enroll` leaves no folder of its own
making behind (a lone `.lock` or `identity/device.key` the next attempt trips on), never
removes one the user had, and keeps the key a hub may have taken the token for;
`models install` of several bundles is all or nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web

import edge.enroll
from edge import cli
from edge.identity import DevicePaths, Identity
from hub.fleet import pki
from outpost import tls
from tests.integration.test_cli_remote import Ran, run
from tests.support import REPO, SHIPPED_MODELS, free_port
from tests.tlsfiles import make_tls_files


def agent(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", *argv],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done


def token_for(url: str, ca_fingerprint: str = "sha256:00") -> str:
    """A well-formed bootstrap token (the agent does not check its signature: the hub
    does) for the hub at `url`."""
    claims = {"url": url, "caf": ca_fingerprint, "exp": time.time() + 600}
    return jwt.encode(claims, "not the hub's key, and long enough for HS256", algorithm="HS256")


def unreachable_token() -> str:
    """A token for a hub that is not there: enroll gets as far as making the folder and
    the key, then fails."""
    return token_for("https://127.0.0.1:1")


def enrolled_looking(root: Path) -> DevicePaths:
    """A folder `models` commands take: its identity is all they read."""
    paths = DevicePaths(root)
    paths.identity_dir.mkdir(parents=True)
    Identity("dev-0123456789ab", "mqtts://127.0.0.1:1", "https://127.0.0.1:1", 0.0, 0.0).save(paths)
    return paths


@pytest.mark.parametrize("argv", [["models", "list"], ["selfcheck"], ["enroll"]], ids=" ".join)
def test_a_file_given_as_the_data_folder_is_called_a_file(argv: list[str], tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("notes")
    enroll = ["--token", unreachable_token(), "--profile", "generic"] if argv == ["enroll"] else []

    done = agent(*argv, "--data", str(a_file), *enroll)

    assert done.returncode == 2, done.stderr
    assert f"{a_file} is a file, not a folder" in done.stderr
    assert "does not exist" not in done.stderr
    assert "Errno" not in done.stderr
    assert a_file.read_text() == "notes"


def test_a_file_on_the_way_to_the_data_folder_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("notes")

    done = agent(
        "enroll", "--data", str(a_file / "agent"), "--token", unreachable_token(),
        "--profile", "generic",
    )  # fmt: skip

    assert done.returncode == 2
    assert f"{a_file} is a file, not a folder" in done.stderr
    assert a_file.read_text() == "notes"


def test_an_enroll_refused_before_the_hub_makes_no_folder(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[profile\nname = ")
    new = tmp_path / "agent"

    malformed = agent("enroll", "--data", str(new), "--token", "abc", "--profile", "generic")
    bad_profile = agent(
        "enroll", "--data", str(new), "--token", unreachable_token(), "--profile", str(broken)
    )

    assert malformed.returncode == 2
    assert "the bootstrap token is not a token" in malformed.stderr
    assert bad_profile.returncode == 2
    assert f"{broken}: not valid TOML" in bad_profile.stderr
    assert list(tmp_path.iterdir()) == [broken]


def test_a_failed_enroll_removes_the_folders_it_made_only(tmp_path: Path) -> None:
    new = tmp_path / "new" / "agent"  # both made by the enroll
    kept = tmp_path / "kept"  # the user's, empty
    kept.mkdir()

    into_new = agent(
        "enroll", "--data", str(new), "--token", unreachable_token(), "--profile", "generic"
    )
    into_kept = agent(
        "enroll", "--data", str(kept), "--token", unreachable_token(), "--profile", "generic"
    )

    assert into_new.returncode == 2
    assert "cannot reach the hub at https://127.0.0.1:1" in into_new.stderr
    assert not (tmp_path / "new").exists()
    assert into_kept.returncode == 2
    assert kept.is_dir()  # with the key it made: an enroll again uses the same one
    assert (kept / "identity" / "device.key").exists()


def test_models_install_checks_every_bundle_before_installing_any(tmp_path: Path) -> None:
    paths = enrolled_looking(tmp_path / "agent")
    good = str(SHIPPED_MODELS[0])
    damaged = tmp_path / "damaged"
    shutil.copytree(SHIPPED_MODELS[1], damaged)
    model = damaged / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1])  # truncated: the manifest's size differs

    missing = agent("models", "install", "--data", str(paths.root), good, "nosuch_bundle")
    truncated = agent("models", "install", "--data", str(paths.root), good, str(damaged))

    assert missing.returncode == 2
    assert "nosuch_bundle does not exist: give a bundle folder; nothing was installed" in (
        missing.stderr
    )
    assert truncated.returncode == 2
    assert "truncated or replaced" in truncated.stderr
    assert "installed" not in missing.stdout + truncated.stdout
    assert not any(paths.models.glob("*/*"))
    listed = agent("models", "list", "--data", str(paths.root))
    assert listed.stdout.strip() == "no models installed"


def test_models_install_refuses_two_models_under_one_name_and_version(tmp_path: Path) -> None:
    paths = enrolled_looking(tmp_path / "agent")
    other = tmp_path / "other"
    shutil.copytree(SHIPPED_MODELS[1], other)
    # The second model's files under the first's name and version: `install` would
    # take the first, then refuse this one.
    first = json.loads((SHIPPED_MODELS[0] / "model.json").read_text())
    manifest = json.loads((other / "model.json").read_text())
    manifest["name"], manifest["version"] = first["name"], first["version"]
    (other / "model.json").write_text(json.dumps(manifest))

    done = agent("models", "install", "--data", str(paths.root), str(SHIPPED_MODELS[0]), str(other))

    assert done.returncode == 2, done.stdout
    assert f"{other}: {first['name']} {first['version']} is also" in done.stderr
    assert "another model" in done.stderr
    assert "nothing was installed" in done.stderr
    assert not any(paths.models.glob("*/*"))


def test_a_failed_enroll_removes_nothing_another_put_into_a_folder_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two enrolls in parallel (a provisioning script): `--data fleet/agent1` makes
    `fleet/`, `--data fleet/agent2` finds it there and enrolls. The first one failing
    removes what it wrote and its own folder, never `fleet/` with the other's key."""
    fleet = tmp_path / "fleet"  # not there yet: this enroll makes it
    mine, other = fleet / "agent1", fleet / "agent2"

    async def enroll_fails(token: str, paths: DevicePaths, profile: Path, name: str = "") -> None:
        paths.identity_dir.mkdir(mode=0o700)
        paths.key.write_text("this enroll's key")  # as the real one writes, before the hub
        (other / "identity").mkdir(parents=True)  # meanwhile, the other enroll
        (other / "identity" / "device.key").write_text("the other's key")
        raise edge.enroll.EnrollError("the hub refused enrollment (401): token expired")

    monkeypatch.setattr(edge.enroll, "enroll", enroll_fails)
    code = cli.main(
        ["enroll", "--data", str(mine), "--token", unreachable_token(), "--profile", "generic"]
    )

    assert code == 2
    assert not mine.exists()
    assert [p.name for p in fleet.iterdir()] == ["agent2"]
    assert (other / "identity" / "device.key").read_text() == "the other's key"


async def _enroll_answered(tmp_path: Path, answer: str) -> tuple[Ran, Path, int]:
    """`outpost-agent enroll` (a child process) against a hub whose answer to the
    enrollment request is `answer`; what it said, its data folder, and how many
    requests reached the hub."""
    files = make_tls_files(tmp_path / "tls")
    ca_pem = files.ca.read_bytes()
    posted: list[dict[str, str]] = []

    async def ca(_: web.Request) -> web.Response:
        return web.Response(body=ca_pem)

    async def enrollment(request: web.Request) -> web.Response:
        posted.append(await request.json())  # a hub would have taken the token here
        if answer == "lost":
            assert request.transport is not None
            request.transport.close()  # as a dropped link would, before any answer
            return web.Response(status=500)
        if answer == "proxy 502":  # the hub was slow, the proxy before it gave up
            return web.Response(status=502, text="<html>Bad Gateway</html>")
        if answer == "cut 201":
            return web.Response(status=201, text='{"certificate": "-----BEGIN CERT')
        if answer == "201, another CA's certificate":
            stranger_key, stranger = pki.make_ca("not the fleet CA")
            public_key = pki.new_ec_key().public_key()
            issued = pki.issue(
                stranger_key, stranger, common_name="dev-1", public_key=public_key, days=1
            )
            body = {"certificate": issued.pem.decode(), "device_id": "dev-1"}
            return web.json_response(body, status=201)
        return web.json_response({"error": {"message": "token expired"}}, status=401)

    app = web.Application()
    app.router.add_get("/api/v1/enroll/ca", ca)
    app.router.add_post("/api/v1/enroll", enrollment)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(
        runner,
        "127.0.0.1",
        port,
        ssl_context=tls.server_context(files.server_cert, files.server_key),
    )
    await site.start()
    new = tmp_path / "agent"
    try:
        ran = await run(
            "edge.cli", "enroll", "--data", str(new), "--token",
            token_for(f"https://127.0.0.1:{port}", tls.fingerprint(ca_pem)),
            "--profile", "generic",
        )  # fmt: skip
    finally:
        await runner.cleanup()
    return ran, new, len(posted)


@pytest.mark.parametrize(
    "answer", ["lost", "proxy 502", "cut 201", "201, another CA's certificate"]
)
async def test_an_answer_after_the_request_reached_the_hub_keeps_the_key(
    tmp_path: Path, answer: str
) -> None:
    """The hub may have taken the token for this key whatever came back (a proxy's
    page, a body cut short, a certificate that does not check): it answers the same key
    again, so the folder and its key stay for the retry the message asks for."""
    ran, new, posted = await _enroll_answered(tmp_path, answer)

    assert (ran.code, posted) == (2, 1)
    assert "run the same enroll again" in ran.err
    assert "refused" not in ran.err
    assert (new / "identity" / "device.key").exists()


async def test_a_refusal_by_the_hub_removes_the_folder_it_made(tmp_path: Path) -> None:
    ran, new, posted = await _enroll_answered(tmp_path, "refused")

    assert (ran.code, posted) == (2, 1)
    assert "the hub refused enrollment (401): token expired" in ran.err
    assert "run the same enroll again" not in ran.err
    assert not new.exists()
