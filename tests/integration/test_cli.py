"""The two commands as a user meets them: clear errors that name what was wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jwt

from tests.support import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_hub_init_twice_refuses(tmp_path: Path) -> None:
    first = _run("hub.cli", "init", "--data", str(tmp_path / "hub"))
    second = _run("hub.cli", "init", "--data", str(tmp_path / "hub"))

    assert first.returncode == 0, first.stderr
    assert "fleet CA fingerprint: sha256:" in first.stdout
    assert second.returncode == 2
    assert "refusing to overwrite" in second.stderr


def test_hub_settings_errors_name_the_key(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    assert _run("hub.cli", "init", "--data", str(data)).returncode == 0

    (data / "hub.toml").write_text("[hub]\ncolour = 'blue'\n")
    unknown = _run("hub.cli", "run", "--data", str(data))
    (data / "hub.toml").write_text("[hub]\nmqtt_port = 70000\n")
    out_of_range = _run("hub.cli", "run", "--data", str(data))
    (data / "hub.toml").write_text("[hub]\nweb_port = 8443\n")
    bad_flag = _run("hub.cli", "run", "--data", str(data), "--broker", "mqtt://plain:1883")

    assert unknown.returncode == 2
    assert "hub.colour: unknown key" in unknown.stderr
    assert out_of_range.returncode == 2
    assert "hub.mqtt_port: must be at most 65535" in out_of_range.stderr
    assert bad_flag.returncode == 2
    assert "hub.broker: expected mqtts://HOST:PORT" in bad_flag.stderr


def test_enroll_token_carries_url_pin_and_labels(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    assert _run("hub.cli", "init", "--data", str(data)).returncode == 0
    (data / "hub.toml").write_text("[hub]\npublic_url = 'https://hub.example:9443'\n")

    done = _run(
        "hub.cli", "enroll-token", "--data", str(data), "--ttl", "30m", "--label", "site=north"
    )
    bad = _run("hub.cli", "enroll-token", "--data", str(data), "--label", "no-equals-sign")
    twice = _run("hub.cli", "enroll-token", "--data", str(data), "--label", "a=1", "--label", "a=2")

    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), options={"verify_signature": False})
    assert claims["url"] == "https://hub.example:9443"
    assert claims["caf"].startswith("sha256:")
    assert claims["labels"] == {"site": "north"}
    assert 1790 <= claims["exp"] - claims["iat"] <= 1800
    assert bad.returncode == 2
    assert "--label: expected KEY=VALUE" in bad.stderr
    assert (twice.returncode, "'a' is given twice" in twice.stderr) == (2, True), twice.stderr
    # Its id is said beside it, with how to revoke it; revoked, it is refused again.
    assert f"revoke it with: outpost-hub token revoke --data {data} {claims['jti']}" in (
        done.stderr
    )
    revoked = _run("hub.cli", "token", "revoke", "--data", str(data), claims["jti"])
    twice = _run("hub.cli", "token", "revoke", "--data", str(data), claims["jti"])
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked bootstrap token {claims['jti']}\n")
    assert (twice.returncode, "already revoked" in twice.stderr) == (2, True)


def test_agent_errors_are_clear(tmp_path: Path) -> None:
    not_enrolled = _run("edge.cli", "run", "--data", str(tmp_path / "device"))
    (tmp_path / "agent.toml").write_text("[agent]\nheartbeat_interval = 'often'\n")
    bad_setting = _run(
        "edge.cli",
        "run",
        "--data",
        str(tmp_path / "device"),
        "--config",
        str(tmp_path / "agent.toml"),
    )
    bad_token = _run(
        "edge.cli",
        "enroll",
        "--token",
        "not-a-token",
        "--data",
        str(tmp_path / "device"),
        "--profile",
        str(REPO / "firmware-configs" / "generic.toml"),
    )

    assert not_enrolled.returncode == 2
    assert "holds no enrollment" in not_enrolled.stderr
    assert bad_setting.returncode == 2
    assert "agent.heartbeat_interval: expected a number" in bad_setting.stderr
    assert bad_token.returncode == 2
    assert "the bootstrap token is not a token" in bad_token.stderr


def test_a_data_folder_too_deep_for_the_local_api_socket_is_named(tmp_path: Path) -> None:
    # A Unix socket path holds at most 107 bytes: the agent says so before it starts
    # (its local API could not listen), and a folder a little shallower is let through
    # to the next check (here: not enrolled).
    room = 107 - len(str(tmp_path)) - len("/agent.sock.new") - 1
    too_deep = tmp_path / ("d" * (room + 1))
    just_fits = tmp_path / ("d" * room)

    refused = _run("edge.cli", "run", "--data", str(too_deep))
    passed = _run("edge.cli", "run", "--data", str(just_fits))

    assert refused.returncode == 2
    assert "too long a path for a Unix socket" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert passed.returncode == 2
    assert "holds no enrollment" in passed.stderr, passed.stderr


def test_devices_lists_the_registry(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    assert _run("hub.cli", "init", "--data", str(data)).returncode == 0

    done = _run("hub.cli", "devices", "--data", str(data))

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "NAME",
        "DEVICE",
        "PROFILE",
        "STATE",
        "LAST",
        "HEARTBEAT",
        "CPU",
        "%",
        "RSS",
        "MiB",
        "MODELS",
        "LABELS",
    ]


def test_init_and_the_token_commands_print_no_migration_lines(tmp_path: Path) -> None:
    data = str(tmp_path / "hub")
    ran = [
        _run("hub.cli", "init", "--data", data),
        _run("hub.cli", "enroll-token", "--data", data),  # the first to open the database
        _run("hub.cli", "token", "create", "--data", data, "--role", "viewer"),
        _run("hub.cli", "token", "list", "--data", data),
    ]
    token = ran[2].stdout.strip()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    ran.append(_run("hub.cli", "token", "revoke", "--data", data, jti))

    for done in ran:
        assert done.returncode == 0, done.stderr
        assert "migration" not in done.stderr, done.args


def test_token_command_mistakes_name_what_is_accepted(tmp_path: Path) -> None:
    data = str(tmp_path / "hub")
    assert _run("hub.cli", "init", "--data", data).returncode == 0

    year = _run("hub.cli", "token", "create", "--data", data, "--role", "admin", "--ttl", "1year")
    long_session = _run(
        "hub.cli", "token", "create", "--data", data, "--role", "admin", "--ttl", "2d"
    )
    enroll_year = _run("hub.cli", "enroll-token", "--data", data, "--ttl", "1year")
    # A token that would be expired when minted, and one past the bound (said readably).
    enroll_instant = _run("hub.cli", "enroll-token", "--data", data, "--ttl", "0.1s")
    enroll_months = _run("hub.cli", "enroll-token", "--data", data, "--ttl", "60d")

    for done in (year, enroll_year):
        assert done.returncode == 2
        assert "--ttl: not a duration: '1year'; use a number and one unit: s, m, h or d" in (
            done.stderr
        )
    assert long_session.returncode == 2
    assert "at most 12h, got 2d (an api-key may last up to 366d)" in long_session.stderr
    assert enroll_instant.returncode == 2
    assert "--ttl 0.1s: a bootstrap token lives 1 s at least" in enroll_instant.stderr
    assert enroll_months.returncode == 2
    assert "--ttl 60d: a bootstrap token lives at most 30 days" in enroll_months.stderr
    for done in (year, long_session, enroll_year, enroll_instant, enroll_months):
        assert "Traceback" not in done.stderr


def test_wrong_files_where_folders_databases_and_tokens_belong_are_named(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    data = tmp_path / "hub"
    assert _run("hub.cli", "init", "--data", str(data)).returncode == 0
    (data / "hub.db").write_bytes(b"this is not a database, just text " * 100)
    two_lines = tmp_path / "two-lines.token"
    two_lines.write_text("aaa.bbb.ccc\nddd.eee.fff\n")
    garbage = tmp_path / "garbage.token"
    garbage.write_text("not-a-token")

    init_on_file = _run("hub.cli", "init", "--data", str(a_file))
    list_on_file = _run("hub.cli", "token", "list", "--data", str(a_file))
    damaged = _run("hub.cli", "token", "list", "--data", str(data))
    remote = _run(
        "hub.cli", "tasks", "list", "--hub", "https://127.0.0.1:1", "--token-file", str(two_lines)
    )
    agent = _run(
        "edge.cli", "enroll", "--data", str(tmp_path / "agent"), "--token-file", str(garbage),
        "--profile", "generic",
    )  # fmt: skip

    assert init_on_file.returncode == 2
    assert "is a file, not a folder" in init_on_file.stderr
    assert a_file.read_text() == "keep me"
    assert list_on_file.returncode == 2
    assert "is a file, not a hub data folder" in list_on_file.stderr
    assert damaged.returncode == 2
    assert "hub.db is not a usable SQLite database" in damaged.stderr
    assert remote.returncode == 2  # the token file named is no token: a usage mistake
    assert "holds no API token (one line of three base64url parts" in remote.stderr
    assert agent.returncode == 2
    assert "the bootstrap token is not a token" in agent.stderr
    for done in (init_on_file, list_on_file, damaged, remote, agent):
        assert "Traceback" not in done.stderr, done.stderr
