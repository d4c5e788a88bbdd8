"""Mistakes and damaged files as a new user meets them, through both command lines (child
processes; a real hub where one is needed): each message names the file, argument or
value at fault in words, on one line, with a non-zero exit and no traceback; never a
library's text (cryptography's FAQ link, "[SSL] PEM lib", "Not a directory", "Unknown
error -2", "Not Found [HTTP 404]", psycopg's stray tab)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub.app import Hub
from hub.fleet.enrollment import load_signing_key
from hub.paths import HubPaths
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.integration.test_cli_mistakes import cli
from tests.integration.test_cli_remote import run
from tests.support import SHIPPED_MODELS, free_port

# Refused before any hub is asked; were one asked, this one refuses the connection.
NO_HUB = ("--hub", f"https://127.0.0.1:{free_port()}")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "some.token"
    path.write_text("aaa.bbb.ccc\n")
    return path


def test_a_damaged_hub_key_is_named(hub_paths: HubPaths) -> None:
    hub_paths.token_key.write_text("garbage\n")
    hub_paths.signing_key.write_bytes(hub_paths.ca_cert.read_bytes())  # a certificate

    ran = cli("hub.cli", "token", "create", "--data", str(hub_paths.root), "--role", "viewer",
              "--subject", "ci")  # fmt: skip

    assert ran.code == 2
    assert f"{hub_paths.token_key} is damaged: it holds no readable private key" in ran.err
    assert "cryptography.io" not in ran.err
    with pytest.raises(ValueError, match=f"^{hub_paths.signing_key} is damaged"):
        load_signing_key(hub_paths)


@pytest.mark.parametrize(("name", "holds"), [("ca_key", "private key"), ("ca_cert", "certificate")])
def test_a_damaged_fleet_ca_file_is_named(
    hub_paths: HubPaths, tmp_path: Path, name: str, holds: str
) -> None:
    damaged: Path = getattr(hub_paths, name)
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short, as by a full disk
    data = ("--data", str(hub_paths.root))
    # Each reads the CA its own way: the CRL in the broker's files is signed by it, a
    # bundle names the fleet by it and renews certificates, a token pins its fingerprint
    # (the certificate's only: the key is not needed for a token).
    commands = [
        ("broker-config", *data, "--kind", "mosquitto", "--out", str(tmp_path / "broker")),
        ("bundle", "export", *data, "--to", str(tmp_path / "bundles")),
    ]
    if name == "ca_cert":
        commands.append(("enroll-token", *data))
    for command in commands:
        ran = cli("hub.cli", *command)

        assert ran.code == 2, (command, ran)
        assert f"{damaged} is damaged: it holds no readable {holds}" in ran.err, command
        assert "backup of the data folder" in ran.err
        assert "cryptography.io" not in ran.err


@pytest.mark.parametrize("name", ["device.key", "ca.crt", "device.crt"])
async def test_an_agent_with_a_damaged_identity_file_names_it(
    enroll_device: Enroller, name: str
) -> None:
    paths, _ = await enroll_device()
    damaged = paths.identity_dir / name
    damaged.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")

    ran = await run("edge.cli", "run", "--data", str(paths.root))

    assert ran.code == 2
    what = {"device.key": "private key", "ca.crt": "CA certificate", "device.crt": "certificate"}
    assert f"cannot load the {what[name]} {damaged} (damaged" in ran.err, ran.err


@pytest.mark.parametrize("command", ["run", "renew"])
def test_a_file_given_as_the_agent_s_data_folder_is_named(tmp_path: Path, command: str) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")

    ran = cli("edge.cli", command, "--data", str(a_file))

    assert ran.code == 2
    assert f"{a_file} is a file, not a folder" in ran.err
    assert "Not a directory" not in ran.err


def test_a_hub_name_that_does_not_resolve_is_said(token_file: Path) -> None:
    ran = cli(
        "hub.cli", "devices", "--hub", "https://nohost.invalid:1", "--token-file", str(token_file)
    )

    assert ran.code == 1
    assert "cannot reach the hub at https://nohost.invalid:1: cannot resolve the name" in ran.err
    assert "Unknown error" not in ran.err


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (("devices", "show", ""), "DEVICE"),
        (("devices", "label", " ", "k=v"), "DEVICE"),
        (("tasks", "show", ""), "TASK"),
        (("tasks", "cancel", ""), "TASK"),
        (("tasks", "list", "--device", ""), "--device"),
        (("policy", "delete", ""), "LAYER"),
        (("policy", "show", "--device", ""), "--device"),
        (("sinks", "dead-letters", ""), "SINK"),
    ],
)
def test_an_empty_name_or_id_is_refused_before_the_hub_is_asked(
    token_file: Path, argv: tuple[str, ...], argument: str
) -> None:
    ran = cli("hub.cli", *argv, *NO_HUB, "--token-file", str(token_file))

    assert ran.code == 2
    assert f"argument {argument}: an empty value: give its name or id" in ran.err


@pytest.mark.parametrize(
    ("labels", "said"), [(("k=v", "k=w"), "(k=v and k=w)"), (("k=v", "k-"), "(k=v and k-)")]
)
def test_a_label_given_twice_is_refused_not_the_last_kept(
    token_file: Path, labels: tuple[str, ...], said: str
) -> None:
    ran = cli("hub.cli", "devices", "label", "pump", *labels, *NO_HUB, "--token-file",
              str(token_file))  # fmt: skip

    assert ran.code == 2
    assert f"label 'k' is given twice {said}; give each key once" in ran.err


@pytest.mark.parametrize(
    ("file", "text", "said"),
    [
        ("model.json", '{"name": ', "model.json: not valid JSON"),
        ("sample.json", "[]", "sample.json: expected a table, got array"),
        ("model.tflite", "", "model.tflite: the file is empty"),
    ],
)
def test_a_broken_bundle_file_is_named_before_upload(
    tmp_path: Path, token_file: Path, file: str, text: str, said: str
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_MODELS[0], bundle)
    (bundle / file).write_text(text)

    ran = cli("hub.cli", "models", "upload", str(bundle), *NO_HUB, "--token-file", str(token_file))

    assert ran.code == 2
    assert f"{bundle / said}" in ran.err
    assert "nothing was uploaded" in ran.err


def _bundle_with(tmp_path: Path, **changed: object) -> Path:
    """A copy of a shipped bundle, its manifest's fields changed (None: left out)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_MODELS[0], bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    for field, value in changed.items():
        if value is None:
            del manifest[field]
        else:
            manifest[field] = value
    (bundle / "model.json").write_text(json.dumps(manifest))
    return bundle


async def test_a_bundle_without_sha256_and_size_is_uploaded(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    """docs/operations.md: `sha256` and `size` may be left out; the hub computes them."""
    bundle = _bundle_with(tmp_path, sha256=None, size=None, version="1.1.0")
    model = (bundle / "model.tflite").read_bytes()
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(await api.token("admin", subject="alice"))

    ran = await run(
        "hub.cli", "models", "upload", str(bundle), "--hub", hub.config.hub_url,
        "--token-file", str(admin_file), "--ca", str(hub.paths.ca_cert),
    )  # fmt: skip

    assert ran.code == 0, ran.err
    name = json.loads((bundle / "model.json").read_text())["name"]
    stored = await hub.parts.store.model(name, "1.1.0")
    assert stored is not None
    assert (stored.sha256, stored.size) == (hashlib.sha256(model).hexdigest(), len(model))


@pytest.mark.parametrize(
    ("field", "wrong"), [("sha256", "0" * 64), ("size", 12345), ("sha256", "F" * 64)]
)
def test_a_wrong_sha256_or_size_is_refused_before_upload(
    tmp_path: Path, token_file: Path, field: str, wrong: object
) -> None:
    bundle = _bundle_with(tmp_path, **{field: wrong})

    ran = cli("hub.cli", "models", "upload", str(bundle), *NO_HUB, "--token-file", str(token_file))

    assert ran.code == 2
    assert f"{bundle / 'model.json'}: {field} {wrong!r} does not match model.tflite" in ran.err
    assert "nothing was uploaded" in ran.err
    assert "cannot reach the hub" not in ran.err  # refused here, the hub never asked


def test_a_long_subject_is_not_echoed_whole(hub_paths: HubPaths) -> None:
    subject = "x " * 50_000

    ran = cli("hub.cli", "token", "create", "--data", str(hub_paths.root), "--role", "viewer",
              "--subject", subject)  # fmt: skip

    assert ran.code == 2
    assert "subject must be 1-64 of letters" in ran.err
    assert "(100,000 characters)" in ran.err
    assert len(ran.err) < 300


def test_a_database_that_refuses_is_said_on_one_line_with_its_reason(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    refused = cli("hub.cli", "init", "--data", str(tmp_path / "a"), "--db",
                  f"postgresql://outpost@127.0.0.1:{port}/hub")  # fmt: skip
    no_port = cli("hub.cli", "init", "--data", str(tmp_path / "b"), "--db",
                  "postgresql://outpost@db.example:notaport/hub")  # fmt: skip

    assert refused.code == 2
    assert "Connection refused; Is the server running on that host" in refused.err
    assert "\t" not in refused.err
    assert refused.err.count("\n") == 1
    assert no_port.code == 2
    assert "the port 'notaport' of host 'db.example' is not a number" in no_port.err
    assert "ai_socktype" not in no_port.err
