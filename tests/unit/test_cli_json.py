"""JSON given to a command is read as JSON is written: NaN, Infinity and 1e400 (inf to
Python's reader) reached the hub, whose answer named neither the file nor the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.cli import main
from hub.cli.jsontext import parse


def test_json_is_read_whole() -> None:
    assert parse('{"a": [1, 2.5, -3e10, null, "x"]}', "here") == {"a": [1, 2.5, -3e10, None, "x"]}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[[NaN]]", "here is not JSON: NaN is no JSON number"),
        ('{"a": -Infinity}', "here is not JSON: -Infinity is no JSON number"),
        ("[1e400]", "here is not JSON: 1e400 is too large for a number"),
        ("[1,", "here is not JSON: Expecting value"),
    ],
)
def test_what_json_cannot_hold_is_refused_naming_where(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=r"^here is not JSON") as refused:
        parse(text, "here")
    assert said in str(refused.value)


def test_commands_refuse_it_as_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "t.token"
    token.write_text("tok\n")
    policy = tmp_path / "policy.json"
    policy.write_text('{"heartbeat_interval_s": Infinity}')
    remote = ["--hub", "https://127.0.0.1:1", "--token-file", str(token)]
    assert main(["tasks", "submit", *remote, "--model", "m", "--input", "[[NaN]]"]) == 2
    assert "--input is not JSON: NaN is no JSON number" in capsys.readouterr().err
    assert main(["policy", "set", *remote, "fleet", str(policy)]) == 2
    assert f"{policy} is not JSON: Infinity is no JSON number" in capsys.readouterr().err


def test_json_nested_too_deeply_is_refused_naming_where() -> None:
    # Python's reader raised RecursionError, which the commands showed as a traceback.
    with pytest.raises(ValueError, match=r"^here is not JSON this reader takes: nested too deep"):
        parse('{"masking": ' + "[" * 100_000 + "]" * 100_000 + "}", "here")


def test_a_deeply_nested_policy_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "t.token"
    token.write_text("tok\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    remote = ["--hub", "https://127.0.0.1:1", "--token-file", str(token)]
    assert main(["policy", "set", *remote, "fleet", str(deep)]) == 2
    assert f"{deep} is not JSON this reader takes: nested too deeply" in capsys.readouterr().err
