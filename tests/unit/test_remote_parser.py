"""What the remote commands take as shares and ratios: `--canary 1` meant the whole fleet
while `--canary 2` meant 2 %, and a NaN reached the hub as JSON it could not read."""

from __future__ import annotations

import argparse

import pytest

from hub.api.params import MAX_LIMIT
from hub.cli import main
from hub.cli.remote_parser import MAX_PAGE, parse_share


@pytest.mark.parametrize(
    ("text", "share"),
    [("10%", 0.1), ("10", 0.1), ("0.1", 0.1), ("2", 0.02), ("100%", 1.0), ("100", 1.0),
     ("1%", 0.01), ("0", 0.0), ("0.5", 0.5)],
)  # fmt: skip
def test_a_share_is_a_percentage_or_a_fraction(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["1", "1.0", "nan", "inf", "-5%", "101%", "250", "ten"])
def test_what_is_no_share_or_could_be_two_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_share(text)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--canary", "1"], "argument --canary: '1' is ambiguous: write 1% or 100%"),
        (["--shadow", "--agreement-min", "nan"], "argument --agreement-min: 'nan' is not a"),
        (["--shadow", "--latency-ratio-max", "inf"], "argument --latency-ratio-max: 'inf'"),
        (["--shadow", "--latency-ratio-max", "0"], "argument --latency-ratio-max: '0'"),
    ],
)
def test_a_rollout_start_with_such_a_value_is_a_usage_error(
    flags: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["rollouts", "start", "m", "1.0.0", "--hub", "https://127.0.0.1:1", *flags])
    assert ended.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["audit", "--limit", "-5"], "argument --limit: '-5' is not a whole number from 1 to 500"),
        (["tasks", "list", "--limit", "501"], "argument --limit: '501' is not a whole number"),
        (["sinks", "dead-letters", "s", "--limit", "x"], "argument --limit: 'x' is not a whole"),
        (["devices", "show", "d", "--events", "-3"], "argument --events: '-3' is not a whole"),
    ],
)
def test_a_page_size_the_api_would_refuse_is_a_usage_error(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hub refused it (exit 1), naming `query.limit` for --events."""
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--hub", "https://127.0.0.1:1"])
    assert ended.value.code == 2
    assert said in capsys.readouterr().err


def test_the_page_size_bound_is_the_apis() -> None:
    assert MAX_PAGE == MAX_LIMIT
