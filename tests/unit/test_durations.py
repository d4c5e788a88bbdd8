"""Unit tests of outpost/durations.py."""

from __future__ import annotations

import argparse

import pytest

from outpost import durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1.5h", 5400.0),
        ("10", 10.0),
        ("0.5", 0.5),
        ("0.5s", 0.5),
        (" 5m ", 300.0),
        ("5 m", 300.0),
        ("90d", 90 * 86400.0),
        ("007s", 7.0),
    ],
)
def test_parse_accepts(text: str, seconds: float) -> None:
    assert durations.parse(text) == pytest.approx(seconds)
    assert isinstance(durations.parse(text), float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "0",
        "0s",
        "0.0h",
        "-1m",
        "-5",
        "+5s",
        "5w",
        "5ms",
        "5M",
        "5H",
        "1h30m",
        "1.h",
        ".5h",
        "1e3",
        "1,5h",
        "s",
        "nan",
        "inf",
        "5s\n5s",
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        durations.parse(text)


def test_parse_refuses_a_number_too_large_to_be_finite() -> None:
    # float("1" + 400 zeros) is inf; an infinite duration later breaks int(now + ttl).
    with pytest.raises(ValueError, match="duration"):
        durations.parse("1" + "0" * 400 + "s")


def test_a_refusal_names_the_accepted_units() -> None:
    with pytest.raises(durations.DurationError, match="s, m, h or d") as refused:
        durations.parse("1year")
    assert isinstance(refused.value, ValueError)


def test_argparse_shows_the_refusal_not_its_own_invalid_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="outpost-hub token create")
    parser.add_argument("--ttl", type=durations.parse)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--ttl", "1year"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "argument --ttl: not a duration: '1year'; use a number and one unit" in err
    assert "invalid parse value" not in err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(43200, "12h"), (366 * 86400, "366d"), (5400, "90m"), (90, "90s"), (61, "61s"), (0.5, "0.5s")],
)
def test_describe_uses_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert durations.describe(seconds) == text
    assert durations.parse(text) == seconds
