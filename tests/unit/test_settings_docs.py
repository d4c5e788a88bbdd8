"""The settings reference in docs/ is the declarations' own: it fails when they differ."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from outpost import schema
from scripts import settings_docs
from scripts.settings_docs import DOC, render


def test_the_settings_reference_and_policy_schema_match_the_declarations() -> None:
    for path, text in settings_docs.outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} differs from the declarations: run `python -m scripts.settings_docs`"
        )


def test_every_setting_is_in_the_reference_with_its_help() -> None:
    written = DOC.read_text(encoding="utf-8")
    for _heading, _where, cls in settings_docs.SECTIONS:
        for key, _kind, _default, help_text in schema.describe(cls):
            assert help_text.strip(), f"{cls.__name__}.{key} has no help text"
            assert f"| `{key}` |" in written, f"{key} is missing from {DOC}"


def test_check_refuses_a_stale_reference_and_accepts_a_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "settings.md"
    stale.write_text(render().replace("MQTT keepalive", "MQTT keep-alive"), encoding="utf-8")
    monkeypatch.setattr(settings_docs, "DOC", stale)
    monkeypatch.setattr(settings_docs, "POLICY_SCHEMA", tmp_path / "policy.schema.json")
    (tmp_path / "policy.schema.json").write_text(settings_docs.policy_schema(), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["settings_docs", "--check"])
    with pytest.raises(SystemExit, match="out of date"):
        settings_docs.main()
    stale.write_text(render(), encoding="utf-8")
    settings_docs.main()  # current: no exit
