"""A roll-up's labels beyond `rollup.MAX_LABELS`: their counts go to "other", as the
agent folds them, so an hour's label counts still sum to its inferences."""

from __future__ import annotations

import msgspec

from hub.store import rollupread
from outpost import rollup


def test_labels_within_the_cap_stay_as_they_are() -> None:
    labels = {f"l{n}": n + 1 for n in range(rollup.MAX_LABELS)}

    assert rollupread.capped_labels(labels) == labels


def test_labels_beyond_the_cap_keep_the_most_counted_and_add_the_rest_to_other() -> None:
    labels = {f"l{n}": n + 1 for n in range(100)}  # l99 the most counted
    labels[rollup.OTHER] = 5

    capped = rollupread.capped_labels(labels)

    assert len(capped) == rollup.MAX_LABELS
    assert sum(capped.values()) == sum(labels.values())
    assert {f"l{n}" for n in range(100 - (rollup.MAX_LABELS - 1), 100)} <= set(capped)
    assert capped[rollup.OTHER] == 5 + sum(range(1, 100 - (rollup.MAX_LABELS - 1) + 1))


def test_a_roll_up_with_too_many_labels_keeps_their_counts_in_other() -> None:
    """Off the agents' shape (more than 64 labels), the loose reader kept the first 64
    and dropped the rest's counts; labels it cut to the same name lost all but one."""
    labels = {f"class-{n}": 1 for n in range(200)}
    long_names = {"x" * 300 + "a": 1, "x" * 300 + "b": 1}  # cut alike to MAX_NAME
    body = msgspec.msgpack.encode(
        {"kind": "rollup", "models": {"net@1": {"count": 202, "labels": labels | long_names}}}
    )

    checked = rollupread.read(body)

    assert checked is not None
    kept = checked.models["net@1"]["labels"]
    assert len(kept) == rollup.MAX_LABELS
    assert sum(kept.values()) == 202
