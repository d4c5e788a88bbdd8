"""The allocation pass's reading of each online device's JSON texts (hub/store/candidates.py):
the same values as parsing each text whole, which it did before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.store.candidates import _labels_of, _load_of, _ready_models_of


def _load_as_before(text: str | None) -> tuple[Any, Any]:
    load = json.loads(text or "{}")
    if "cpu_percent" not in load:
        return None, None
    return load.get("cpu_percent"), load.get("temperature_c")


@pytest.mark.parametrize(
    "text",
    [
        '{"cpu_percent": 12.5, "memory_percent": 31.0, "temperature_c": 40.5, "rss_bytes": 9}',
        '{"cpu_percent": 7}',
        '{"memory_percent": 3.0}',
        '{"cpu_percent": null, "temperature_c": 41.0}',
        '{"cpu_percent": "high"}',  # not what the hub writes: read loosely, as before
        "{}",
        None,
    ],
)
def test_a_load_gives_the_cpu_and_temperature_it_gave_parsed_whole(text: str | None) -> None:
    assert _load_of(text) == _load_as_before(text)


def test_model_lists_keep_only_ready_models_and_repeat_texts_are_parsed_once() -> None:
    text = json.dumps(
        [
            {"name": "a", "version": "1", "sha256": "", "state": "ready", "error": ""},
            {"name": "b", "version": "2", "sha256": "", "state": "failed", "error": "x"},
        ]
    )
    first = _ready_models_of(text)
    assert first == frozenset({("a", "1")})
    assert _ready_models_of("".join(text)) is first  # an equal text from another row
    assert _ready_models_of(None) == frozenset()
    assert _labels_of('{"site": "north"}') == {"site": "north"}
