"""An empty value (a variable a script forgot to set) is a usage error naming the option,
never "not given": `--db ""` ran a hub on the default hub.db, `--replica-id ""` a single
hub, `--out ""` wrote keys into the current folder."""

from __future__ import annotations

import argparse

import pytest

from edge.cli import _parser as agent_parser
from hub.cli.parser import build_parser as hub_parser

DATA = ["--data", "folder"]

HUB = [
    (["run", *DATA, "--db", ""], "argument --db: an empty value: give a database URL"),
    (["run", *DATA, "--replica-id", ""], "argument --replica-id: an empty value"),
    (["run", *DATA, "--broker", " "], "argument --broker: an empty value"),
    (["run", *DATA, "--mqtt-host", ""], "argument --mqtt-host: an empty value"),
    (["run", *DATA, "--web-host", ""], "argument --web-host: an empty value"),
    (["run", *DATA, "--config", ""], "argument --config: an empty path: give a settings file"),
    (["init", *DATA, "--db", ""], "argument --db: an empty value: give a postgresql:// URL"),
    (["db", "migrate", *DATA, "--to", ""], "argument --to: an empty value"),
    (["db", "migrate", *DATA, "--from", "", "--to", "postgresql://h/db"], "argument --from:"),
    (
        ["broker-config", *DATA, "--kind", "mosquitto", "--out", "", "--force"],
        "argument --out: an empty path: give the folder to write",
    ),
    (
        ["broker-config", *DATA, "--kind", "mosquitto", "--out", "o", "--replica", ""],
        "argument --replica: an empty value",
    ),
    (["bundle", "export", *DATA, "--to", ""], "argument --to: an empty path"),
    (["bundle", "export", *DATA, "--to", "o", "--device", ""], "argument --device: an empty"),
    (["bundle", "import", *DATA, ""], "argument paths: an empty path"),
    (["bundle", "import", *DATA, "p", "--ack-out", ""], "argument --ack-out: an empty path"),
    (["agent-releases", "upload", *DATA, ""], "argument DIR: an empty path: give a release folder"),
    (["token", "revoke", *DATA, ""], "argument jti: an empty value"),
    (["device", "revoke", *DATA, ""], "argument DEVICE: an empty value"),
    # The remote commands: empty, OUTPOST_HUB (or the folder) answered instead.
    (["models", "upload", ""], "argument DIR: an empty path: give a model bundle folder"),
    (["devices", "--hub", ""], "argument --hub: an empty value"),
    (["devices", "--token-file", " "], "argument --token-file: an empty path"),
    (["devices", "--ca", ""], "argument --ca: an empty path: give the CA certificate file"),
]

AGENT = [
    (["run", *DATA, "--broker", ""], "argument --broker: an empty value"),
    (["run", *DATA, "--config", ""], "argument --config: an empty path"),
    (
        ["enroll", *DATA, "--token-file", "", "--profile", "generic"],
        "argument --token-file: an empty path: give the file holding the token",
    ),
    (["enroll", *DATA, "--token", "t", "--profile", ""], "argument --profile: an empty value"),
    (["models", "install", *DATA, ""], "argument bundles: an empty path: give a bundle folder"),
    (["bundle", "export", *DATA, "--to", ""], "argument --to: an empty path"),
    (["bundle", "import", *DATA, " "], "argument paths: an empty path"),
]


def _ids(cases: list[tuple[list[str], str]]) -> list[str]:
    """`run --db`: the command and the option left empty."""
    return [f"{argv[0]} {said.split(':')[0].removeprefix('argument ')}" for argv, said in cases]


def _refused(
    parser: argparse.ArgumentParser, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    with pytest.raises(SystemExit) as ended:
        parser.parse_args(argv)
    assert ended.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), HUB, ids=_ids(HUB))
def test_the_hub_refuses_an_empty_value(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert said in _refused(hub_parser(), argv, capsys)


@pytest.mark.parametrize(("argv", "said"), AGENT, ids=_ids(AGENT))
def test_the_agent_refuses_an_empty_value(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert said in _refused(agent_parser(), argv, capsys)


def test_given_values_are_taken_as_they_are() -> None:
    args = hub_parser().parse_args(
        ["run", *DATA, "--db", "postgresql://h/db", "--replica-id", "a", "--broker", "mqtts://b:1"]
    )
    assert (args.db, args.replica_id, args.broker) == ("postgresql://h/db", "a", "mqtts://b:1")
    args = agent_parser().parse_args(["bundle", "export", *DATA, "--to", "out"])
    assert str(args.to) == "out"
