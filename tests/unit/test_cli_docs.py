"""The command reference in docs/ is the parsers' own: it fails when they differ."""

from __future__ import annotations

from scripts.cli_docs import DOC, render


def test_the_command_reference_matches_the_parsers() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"{DOC} differs from the parsers: run `python -m scripts.cli_docs`"
    )


def test_every_command_is_in_the_reference() -> None:
    text = render()
    for command in (
        "outpost-hub devices show",
        "outpost-hub rollouts start",
        "outpost-hub tasks submit",
        "outpost-hub policy set",
        "outpost-hub audit",
        "outpost-agent enroll",
    ):
        assert f"`{command}`" in text
