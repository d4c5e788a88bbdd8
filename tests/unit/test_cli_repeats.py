"""An option that decides what a token may do is given once: argparse keeps the last of
a repeat, so `--role viewer --role admin` minted an admin token without a word."""

from __future__ import annotations

import pytest

from hub.cli.parser import build_parser

CREATE = ["token", "create", "--data", "folder"]


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["--role", "viewer", "--role", "admin"], "--role given twice"),
        (["--role", "viewer", "--ttl", "5m", "--ttl", "90d"], "--ttl given twice"),
        (["--role", "viewer", "--subject", "a", "--subject", "b"], "--subject given twice"),
    ],
)
def test_a_token_option_given_twice_is_refused(
    given: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*CREATE, *given])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_each_given_once_passes_through() -> None:
    args = build_parser().parse_args(
        [*CREATE, "--role", "operator", "--ttl", "5m", "--subject", "ci"]
    )
    assert (args.role, args.ttl, args.subject) == ("operator", 300.0, "ci")
